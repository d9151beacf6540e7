"""A tiny cross-validation end to end: study tables, cv_summary.json, report, and what W&B recorded offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_CV, tiny_cv_config
from hydra import compose, initialize_config_dir
from wandb_offline import offline_runs

from lumbar_lightning.conf import CONF_DIR
from lumbar_lightning.engine.cross_validation import cross_validate
from lumbar_lightning.evaluation.study import load_cv_predictions, task_set


@pytest.fixture(scope="module")
def tiny_cv(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    cfg = tiny_cv_config(f"data.data_dir={tiny_phantom}", "logger=wandb", "cv.workers=2", "threads=1")
    cross_validate(cfg, root=root)
    return root


def test_every_image_is_tested_once_per_rater(tiny_cv: Path, tiny_phantom: Path) -> None:
    frame = load_cv_predictions(tiny_cv)
    truth = pd.read_csv(tiny_phantom / "truth.csv")
    assert frame["sop_instance_uid"].is_unique
    assert set(frame["sop_instance_uid"]) == set(truth["sop_instance_uid"])
    assert (frame["fold_C1"] == frame["fold_C2"]).all()  # the same folds for both classifiers
    assert {"level_C1", "grade_C1", "level_C2", "grade_C2", "level_truth"} <= set(frame.columns)


def test_cv_summary_has_the_study_pairs_and_checks_out(tiny_cv: Path) -> None:
    summary = json.loads((tiny_cv / "cv_summary.json").read_text())
    for task in ("rootlet", "grade"):
        assert {"A1-A2", "A1-C1", "A2-C2", "C1-C2", "truth-C1", "truth-C2", "truth-A1"} <= set(summary[task])
        for row in summary[task].values():
            assert {"accuracy", "f1_macro", "kappa", "n"} <= set(row)
            assert 0.0 <= row["accuracy"] <= 1.0 and row["n"] > 0
            lo, hi = row["accuracy_ci95"]
            assert lo <= row["accuracy"] <= hi
    assert "kappa_quadratic" in summary["grade"]["A1-C1"]
    graded_ = task_set(load_cv_predictions(tiny_cv), "grade")
    order = {g: i for i, g in enumerate("ABCD")}
    gross = sum(
        abs(order[a] - order[b]) >= 2 for a, b in zip(graded_["grade_A1"], graded_["grade_C1"], strict=True)
    )
    assert summary["grade"]["A1-C1"]["gross_errors"] == gross
    assert set(summary["grade"]["A1-C1"]["recall_per_class"]) == set("ABCD")
    # The inter-rater figure recomputed from the raw predictions agrees with the summary.
    frame = load_cv_predictions(tiny_cv)
    graded = task_set(frame, "grade")
    assert summary["grade"]["A1-A2"]["n"] == len(graded)
    assert summary["grade"]["A1-A2"]["accuracy"] == pytest.approx(
        (graded["grade_A1"] == graded["grade_A2"]).mean()
    )
    dist = summary["grade_distribution"]
    assert set(dist) >= {"A1", "A2", "C1", "C2", "truth"}
    assert sum(dist["A1"].values()) == pytest.approx(1.0)
    assert (
        set(summary["per_fold"]) == {"A1", "A2"}
        and summary["per_fold"]["A1"]["grade_accuracy"]["n_folds"] == 4
    )


def test_wandb_runs_are_recorded_without_console_output(tmp_path: Path) -> None:
    """The default W&B logger is silent (a demo CV makes ~75 runs; their banners and summary footers buried the
    one line per fold); the run is still recorded offline."""
    import subprocess
    import sys

    code = (
        "from pathlib import Path; from hydra import compose, initialize_config_dir;"
        "from lumbar_lightning.conf import CONF_DIR; from lumbar_lightning.tracking.wandb import wandb_run\n"
        "with initialize_config_dir(config_dir=CONF_DIR, version_base='1.3'):\n"
        "    cfg = compose(config_name='train', overrides=['logger=wandb'])\n"
        f"with wandb_run(cfg, 'quiet-run', Path({str(tmp_path)!r}), job_type='test') as run:\n"
        "    run.log({'a': 1.0}); run.summary['b'] = 2.0\n"
        # and a stage's Lightning WandbLogger, built as every fit builds it
        "from lumbar_lightning.engine.fold import _trainer; from lumbar_lightning.tracking.wandb import finish_active_run\n"
        # into a folder that does not exist yet, as a CV's first fit finds it ("git root ... does not exist")
        f"fit, _ = _trainer(cfg, 'grade', cfg.model.grade, Path({str(tmp_path)!r}), 'val/acc', 'quiet-fit',"
        f" Path({str(tmp_path / 'cv' / 'logs')!r}))\n"
        "fit.loggers[0].log_metrics({'c': 3.0}); finish_active_run()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # No banner or summary footer. Lightning's WandbLogger always passes `anonymous`, which wandb 0.31 warns about
    # once per process: that line is the only one left.
    lines = (result.stdout + result.stderr).splitlines()
    assert [ln for ln in lines if "wandb:" in ln and "anonymous setting has no effect" not in ln] == []
    runs = offline_runs(tmp_path)
    assert set(runs) == {"quiet-run", "quiet-fit"} and runs["quiet-run"]["history"][0]["a"] == 1.0
    # no package list per run (the run config's `environment` and requirements.lock say what ran)
    assert list(tmp_path.rglob("requirements.txt")) == []
    assert runs["quiet-fit"]["history"][0]["c"] == 3.0


def test_report_and_figures(tiny_cv: Path) -> None:
    report = (tiny_cv / "report.md").read_text()
    assert "| A1-C1 |" in report and "91.5" in report and "paper" in report
    for task in ("rootlet", "grade"):
        png = tiny_cv / "figures" / f"confusion_{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/confusion_{task}.png" in report
    summary = json.loads((tiny_cv / "cv_summary.json").read_text())
    # The worst cases: the most confident wrong grades against the truth, gross errors first, shown by pseudonym.
    cases = summary["worst_cases"]
    assert cases and "figures/worst_cases.png" in report
    assert (tiny_cv / "figures" / "worst_cases.png").read_bytes()[:4] == b"\x89PNG"
    assert all(c["pred_grade"] != c["reference"] and c["patient"].startswith("P-") for c in cases)
    keys = [(-c["distance"], -c["confidence"]) for c in cases]
    assert keys == sorted(keys)


def test_calibration_and_referral_are_reported_per_rater_and_pair(tiny_cv: Path) -> None:
    """#19: each patch stage's temperature and ECE before/after (pooled test folds), and the referral curve."""
    summary = json.loads((tiny_cv / "cv_summary.json").read_text())
    report = (tiny_cv / "report.md").read_text()
    folds = sorted((tiny_cv / "A1").glob("fold_*/metrics.json"))
    tested = 0
    for path in folds:
        metrics = json.loads(path.read_text())
        cal = metrics["grade"]["gt_box"]["calibration"]
        assert (
            sum(cal["bins_before"]["count"])
            == sum(cal["bins_after"]["count"])
            == np.sum(metrics["grade"]["gt_box"]["test/confmat"])
        )
        tested += sum(cal["bins_after"]["count"])
        # The fitted temperature travels in the best checkpoint (what lumbar-predict loads).
        state = torch.load(path.parent / "checkpoints" / "grade" / "best.ckpt", weights_only=True)
        assert float(state["state_dict"]["temperature"]) == pytest.approx(cal["temperature"])
    assert set(summary["calibration"]["A1"]) == {"detector", "rootlet", "grade", "baseline"}
    grade = summary["calibration"]["A1"]["grade"]
    assert len(grade["temperature"]) == len(folds) and sum(grade["bins_after"]["count"]) == tested
    assert 0.0 <= grade["ece_after"] <= 1.0 and "## Calibration" in report
    assert (tiny_cv / "figures" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    referral = summary["referral"]
    assert {"truth-C1", "A1-C1", "truth-C2", "A2-C2"} <= set(referral["pairs"])
    full = referral["pairs"]["A1-C1"]
    assert full["coverage"][0] == 1.0 and full["accuracy"][0] == pytest.approx(
        summary["grade"]["A1-C1"]["accuracy"]
    )
    assert referral["rater_agreement"] == pytest.approx(summary["grade"]["A1-A2"]["accuracy"])
    assert "## Referral" in report and (tiny_cv / "figures" / "referral.png").is_file()


def test_the_baseline_cnn_is_trained_on_the_same_folds_and_reported(tiny_cv: Path) -> None:
    """Bk, the plain CNN on rater Ak's boxes, lands beside Ck in the tables, the summary and the report."""
    summary = json.loads((tiny_cv / "cv_summary.json").read_text())
    assert {"A1-B1", "A2-B2", "truth-B1", "truth-B2"} <= set(summary["grade"])
    assert "A1-B1" not in summary["rootlet"]  # the baseline grades only
    frame = load_cv_predictions(tiny_cv)
    graded = task_set(frame, "grade")
    assert summary["grade"]["truth-B1"]["n"] == summary["grade"]["truth-C1"]["n"] == len(graded)
    assert summary["grade"]["A1-B1"]["accuracy"] == pytest.approx(
        (graded["grade_A1"] == graded["grade_B1"]).mean()
    )
    row = summary["baseline"]["truth-1"]
    assert row["baseline"]["accuracy"] == pytest.approx(summary["grade"]["truth-B1"]["accuracy"])
    assert row["pipeline_minus_baseline"]["accuracy"] == pytest.approx(
        summary["grade"]["truth-C1"]["accuracy"] - summary["grade"]["truth-B1"]["accuracy"]
    )
    assert "## Pipeline against the baseline CNN" in (tiny_cv / "report.md").read_text()
    for fold in range(4):  # its own checkpoints and test metrics on the rater's boxes, per fold
        metrics = json.loads((tiny_cv / "A1" / f"fold_{fold}" / "metrics.json").read_text())
        assert 0.0 <= metrics["baseline"]["gt_box"]["test/acc"] <= 1.0
        assert (tiny_cv / "A1" / f"fold_{fold}" / "checkpoints" / "baseline" / "best.ckpt").exists()


def test_wandb_offline_runs_are_one_per_rater_stage_fold(tiny_cv: Path) -> None:
    runs = offline_runs(tiny_cv)
    assert all(r["dir"].parent == tiny_cv / "logs" / "wandb" for r in runs.values())  # one folder per CV
    expected = {
        f"{r}-{s}-fold{k}"
        for r in ("A1", "A2")
        for s in ("rootlet", "grade", "baseline", "pipeline")
        for k in range(4)
    } | {f"consensus-detector-fold{k}" for k in range(4)}  # one detector per fold, trained once
    assert expected | {"cv-summary"} == set(runs)
    assert {r["group"] for r in runs.values()} == {"tinycv"}
    grade = runs["A2-grade-fold1"]
    assert grade["config"]["run"]["data"]["rater"] == "A2" and grade["config"]["stage"] == "grade"
    assert grade["config"]["run"]["model"]["grade"]["module"]["width"] == 0.125
    keys = set().union(*grade["history"])
    assert {"train/loss_epoch", "val/acc", "val/acc_best", "test/acc", "test/f1", "test/f1_D"} <= keys
    assert any(k.startswith("test/confusion_matrix") for k in keys)
    pipeline = runs["A1-pipeline-fold0"]
    tables = list((pipeline["dir"] / "files" / "media" / "table").glob("predictions_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert "sop_instance_uid" in table["columns"] and "pred_grade" in table["columns"]
    assert not any(str(v).startswith("PHANTOM-") for row in table["data"] for v in row)  # pseudonyms only
    summary_keys = set().union(*runs["cv-summary"]["history"])
    assert any(k.startswith("study/grade") for k in summary_keys)


@pytest.mark.slow  # make test-full: lumbar-compare's statistics are tested on known cases in test_statistics; 22 s
def test_compare_two_runs(tiny_cv: Path, tiny_phantom: Path, tmp_path: Path) -> None:
    """Run B: Classifier2 alone with another seed; compared with run A's C1 and C2 on the common images."""
    import subprocess
    import sys

    cfg = tiny_cv_config(f"data.data_dir={tiny_phantom}", "logger=none", "cv.raters=[A2]", "seed=3")
    cross_validate(cfg, root=tmp_path / "b")
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.compare",
        f"run_a={tiny_cv}",
        f"run_b={tmp_path / 'b'}",
        f"out_dir={out}",
        f"hydra.run.dir={tmp_path / 'h'}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["images"] == len(pd.read_csv(tiny_phantom / "truth.csv"))
    tests = comparison["grade"]["tests"]
    assert {"A1: C1@a vs C2@b", "A2: C2@a vs C2@b", "truth: C1@a vs C2@b"} <= set(tests)
    for t in tests.values():
        assert 0.0 <= t["mcnemar"]["p"] <= 1.0 and t["per_fold_ttest"]["folds"] == 4
        assert t["significant"] == (t["mcnemar"]["p"] < 0.05 or t["per_fold_ttest"]["p"] < 0.05)
    # The agreement of run A's C1 with A1 here equals what run A's own summary says.
    own = json.loads((tiny_cv / "cv_summary.json").read_text())["grade"]
    frame = load_cv_predictions(tiny_cv)
    assert "A1-C1@a" in comparison["grade"]["agreement"] and own["A1-C1"]["n"] <= len(frame)
    md = (out / "comparison.md").read_text()
    assert "McNemar" in md and (out / "comparison_grade.png").exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "lumbar_lightning.cli.compare",
            f"run_a={tiny_cv}",
            f"run_b={tmp_path}",
            f"hydra.run.dir={tmp_path / 'h2'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


@pytest.mark.slow  # make test-full: 20 s
def test_a_multirun_over_folds_reproduces_the_cv_folds(
    tiny_cv: Path, tiny_phantom: Path, tmp_path: Path
) -> None:
    """`lumbar-train -m data.fold=...` (Hydra multirun, folds one after another in one process, another logger)
    gives exactly the folds that lumbar-cv trained two at a time in worker processes: same code path, same
    seeds, same per-fold thread count."""
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.train",
        "-m",
        f"data.data_dir={tiny_phantom}",
        "logger=csv",
        "data.fold=1,2",
        "data.rater=A2",
        "threads=1",
        f"hydra.sweep.dir={tmp_path}",
        *TINY_CV,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for job, fold in ((0, 1), (1, 2)):
        single = pd.read_csv(
            tmp_path / str(job) / "A2" / f"fold_{fold}" / "predictions.csv", keep_default_na=False
        )
        in_cv = pd.read_csv(tiny_cv / "A2" / f"fold_{fold}" / "predictions.csv", keep_default_na=False)
        pd.testing.assert_frame_equal(single, in_cv)


def test_the_consensus_detector_is_trained_once_per_fold_and_shared(tiny_cv: Path) -> None:
    """Both raters' folds hold the same detector (A2's is A1's, reloaded), tested against the consensus boxes;
    the multirun test below shows that training it again for A2 gives the same predictions."""
    import torch

    for k in range(4):
        a1, a2 = (tiny_cv / r / f"fold_{k}" / "checkpoints" / "detector" for r in ("A1", "A2"))
        w1, w2 = (torch.load(d / "best.ckpt", weights_only=True)["state_dict"] for d in (a1, a2))
        assert all(torch.equal(w1[name], w2[name]) for name in w1)
        assert not (a2 / "last.ckpt").exists()  # never trained in A2's fold
        m1, m2 = (json.loads((tiny_cv / r / f"fold_{k}" / "metrics.json").read_text()) for r in ("A1", "A2"))
        assert m1["detector"] == m2["detector"] and m1["detector"]["boxes"] == "consensus"


def test_plan_jobs_groups_raters_per_fold_only_for_a_shared_detector(tmp_path: Path) -> None:
    from lumbar_lightning.engine.cross_validation import plan_jobs

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        shared = compose(config_name="cv")
        own = compose(config_name="cv", overrides=["model.detector.boxes=rater"])
    (tmp_path / "A1" / "fold_1").mkdir(parents=True)
    (tmp_path / "A1" / "fold_1" / "metrics.json").write_text("{}")  # done: not planned again
    jobs = plan_jobs(shared, tmp_path, ["A1", "A2"], [0, 1])
    assert [[(r, k) for r, k, _ in job] for job in jobs] == [[("A1", 0), ("A2", 0)], [("A2", 1)]]
    jobs = plan_jobs(own, tmp_path, ["A1", "A2"], [0, 1])
    assert [[(r, k) for r, k, _ in job] for job in jobs] == [[("A1", 0)], [("A2", 0)], [("A2", 1)]]


def test_cv_workers_keep_lightning_notices_out_of_the_fold_lines(tmp_path: Path) -> None:
    """A CV worker builds ~10 Trainers per fold; their accelerator lines and tips stay quiet, warnings do not."""
    import subprocess
    import sys

    code = (
        "import lightning as L; from lumbar_lightning.engine.cross_validation import quiet_lightning\n"
        "from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn\n"
        "quiet_lightning(); L.Trainer(logger=False, enable_checkpointing=False); rank_zero_info('an info notice')\n"
        "rank_zero_warn('a real warning')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert "GPU available" not in out and "an info notice" not in out and "Tip:" not in out
    assert "a real warning" in out


def _children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``, from /proc."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_killing_lumbar_cv_ends_its_workers(tiny_phantom: Path, tmp_path: Path) -> None:
    """`kill` of lumbar-cv used to leave its workers training their folds on, holding the CPU for minutes."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.cv",
        f"data.data_dir={tiny_phantom}",
        "logger=none",
        "cv.workers=2",
        "threads=1",
        *TINY_CV,
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = [
                p for p in _children(parent.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
            ]
        assert len(workers) == 2, "the CV never started its two workers"
        time.sleep(2.0)  # inside their first folds (importing, training)
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if Path(f"/proc/{p}").exists() and _alive(p)]
        assert not (tmp_path / "run" / "cv_summary.json").exists()  # it was stopped, not finished
    finally:
        parent.kill()
        for p in workers:  # never leave a worker behind, whatever failed
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # make test-full: 16 s
def test_seeds_run_the_cv_once_per_seed_and_report_the_spread(tiny_phantom: Path, tmp_path: Path) -> None:
    cfg = tiny_cv_config(
        f"data_dir={tiny_phantom}", "logger=none", "threads=1", "seeds=[0,1]", "cv.folds=[0]"
    )
    summary = cross_validate(cfg, root=tmp_path)
    per_seed = {s: json.loads((tmp_path / f"seed_{s}" / "cv_summary.json").read_text()) for s in (0, 1)}
    row = summary["grade"]["A1-C1"]["accuracy"]
    values = [per_seed[s]["grade"]["A1-C1"]["accuracy"] for s in (0, 1)]
    assert row["values"] == values
    assert row["mean"] == pytest.approx(sum(values) / 2)
    assert row["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    # the seed really changed the training: the two runs' grader weights differ
    fold = "A1/fold_0/predictions.csv"
    p0, p1 = (pd.read_csv(tmp_path / f"seed_{s}" / fold) for s in (0, 1))
    assert not p0["p_A"].equals(p1["p_A"])
    saved = json.loads((tmp_path / "seeds_summary.json").read_text())
    assert saved["seeds"] == [0, 1] and "gross_errors" in saved["grade"]["A1-C1"]
    assert "| A1-C1 |" in (tmp_path / "seeds_report.md").read_text()


def test_a_consensus_classifier_learns_both_raters_votes_and_joins_every_table(
    tiny_phantom: Path, tmp_path: Path
) -> None:
    """#19: cv.raters=[..., consensus] trains Cc on the same folds, with soft targets from the raters' votes, and
    truth-Cc, Ak-Cc and C1-Cc land in the same tables, calibration and referral as C1."""
    from lumbar_lightning.data.datamodules import PatchDataModule
    from lumbar_lightning.data.transforms import PatchGeometry

    dm = PatchDataModule(
        task="grade",
        patch=PatchGeometry(24),
        data_dir=str(tiny_phantom),
        rater="consensus",
        num_folds=4,
        augment=None,
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    shares = batch["soft_target"]
    assert torch.allclose(shares.sum(-1), torch.ones(len(shares)))
    assert (shares.max(-1).values < 1).any()  # some images the raters graded differently: a real soft target
    assert (shares.argmax(-1) == batch["target"]).float().mean() > 0.8  # the hard target is the majority vote

    cfg = tiny_cv_config(
        f"data.data_dir={tiny_phantom}",
        "logger=none",
        "threads=1",
        "cv.raters=[A1,consensus]",
        "cv.folds=[0]",
    )
    cross_validate(cfg, root=tmp_path)
    summary = json.loads((tmp_path / "cv_summary.json").read_text())
    assert {"A1-C1", "A1-Cc", "A2-Cc", "C1-Cc", "truth-Cc", "truth-Bc"} <= set(summary["grade"])
    assert "truth-Cc" in summary["referral"]["pairs"] and "consensus" in summary["calibration"]
    predictions = pd.read_csv(tmp_path / "consensus" / "fold_0" / "predictions.csv", keep_default_na=False)
    assert (predictions["trained_on"] == "consensus").all() and "grade_consensus" in predictions
    assert "| truth-Cc |" in (tmp_path / "report.md").read_text()


def test_a_folds_raters_share_its_detections(
    tiny_run: Path, tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a consensus detector the second rater's fold reads the first's detections of the test images instead
    of detecting them again, and gets the same predictions; another detector (other checkpoint bytes) or a
    detector per rater shares nothing."""
    from lumbar_lightning.data.datamodules import load_dataset
    from lumbar_lightning.engine import detector_sharing
    from lumbar_lightning.engine.detector_sharing import shared_detections
    from lumbar_lightning.inference.ensemble import load_fold_pipeline
    from lumbar_lightning.inference.labelled import predict_test_images
    from lumbar_lightning.layout import FoldLayout

    fold = tiny_run / "A1" / "fold_0"
    cfg = tiny_cv_config(f"data.data_dir={tiny_phantom}")
    checkpoint = FoldLayout(fold).best("detector")
    monkeypatch.setattr(detector_sharing, "_DETECTIONS", {})  # the fixture's own fold filled one
    memo = shared_detections(cfg, checkpoint)
    assert memo == {} and shared_detections(cfg, checkpoint) is memo
    dataset = load_dataset(tiny_phantom)
    patients = pd.read_csv(fold / "predictions.csv")["patient"].unique()
    pipeline = load_fold_pipeline(fold)
    calls: list[int] = []
    real = pipeline.detect
    monkeypatch.setattr(pipeline, "detect", lambda *a, **k: calls.append(1) or real(*a, **k))
    alone = predict_test_images(pipeline, dataset, patients, 0, "A1")
    first = predict_test_images(pipeline, dataset, patients, 0, "A1", detections=memo)
    second = predict_test_images(pipeline, dataset, patients, 0, "A2", detections=memo)
    assert len(calls) == 2 and len(memo) == 1  # alone detects, and the memo's first call; its second does not
    pd.testing.assert_frame_equal(first, alone)
    shown = [c for c in first if c.startswith(("pred_", "p_", "box_score", "rootlet_prob"))]
    pd.testing.assert_frame_equal(second[shown], first[shown])
    other = tmp_path / "best.ckpt"
    other.write_bytes(checkpoint.read_bytes() + b"\0")
    assert shared_detections(cfg, other) == {}  # a new memo for another detector; the old one is dropped
    assert shared_detections(cfg, checkpoint) == {}
    per_rater = tiny_cv_config(f"data.data_dir={tiny_phantom}", "model.detector.boxes=rater")
    assert shared_detections(per_rater, checkpoint) is None
