"""Exact reproduction and resumption: a fold trained twice, or killed mid-stage and resumed, gives the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import GRADE_EMA, TINY_CV

from lumbar_lightning.engine.reproduce import comparable

#: Enough grade epochs that a kill lands inside the stage.
LONGER_GRADE = ["model.grade.trainer.max_epochs=6", "model.grade.samples_per_epoch=256", "threads=1"]


def _train_cmd(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.train",
        f"data.data_dir={data}",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        *TINY_CV,
        *LONGER_GRADE,
        *extra,
    ]


def _fold(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    out = run_dir / "A1" / "fold_0"
    metrics = json.loads((out / "metrics.json").read_text())
    return comparable(metrics), pd.read_csv(out / "predictions.csv", keep_default_na=False)


@pytest.mark.parametrize(
    "extra",
    [(), pytest.param((GRADE_EMA,), marks=pytest.mark.slow)],  # no preset averages weights: slow suite only
    ids=["plain", "weight-averaged"],
)
def test_killed_mid_stage_then_resumed_equals_uninterrupted(
    tiny_phantom: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """Reproduction (two uninterrupted runs agree exactly) and resumption (SIGKILL inside the grade stage, the
    same command again: finished stages are reloaded, the grade stage continues from last.ckpt)."""
    reference = subprocess.run(
        _train_cmd(tiny_phantom, tmp_path / "ref", *extra), capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(tiny_phantom, killed_dir, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    grade = killed_dir / "A1" / "fold_0" / "checkpoints" / "grade"
    deadline = time.monotonic() + 300
    while not (grade / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (grade / "last.ckpt").exists() and not (grade / "done.json").exists(), (
        "the kill missed the grade stage"
    )
    assert not (killed_dir / "A1" / "fold_0" / "metrics.json").exists()
    epochs_before = torch.load(grade / "last.ckpt", weights_only=True)["epoch"]
    resumed = subprocess.run(
        _train_cmd(tiny_phantom, killed_dir, *extra), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = resumed.stdout + resumed.stderr
    assert "A1-rootlet-fold0: finished in an earlier run, reloaded" in log
    assert "A1-grade-fold0: resuming from" in log and epochs_before < 5
    ref_metrics, ref_preds = _fold(tmp_path / "ref")
    got_metrics, got_preds = _fold(killed_dir)
    pd.testing.assert_frame_equal(got_preds, ref_preds)
    assert got_metrics == ref_metrics
    # The fully trained weights too (the best checkpoint may predate the kill): bit for bit.
    ref_last, got_last = (
        torch.load(d / "A1" / "fold_0" / "checkpoints" / "grade" / "last.ckpt", weights_only=True)
        for d in (tmp_path / "ref", killed_dir)
    )
    assert ref_last["epoch"] == got_last["epoch"] == 5
    for key in ("state_dict", "current_model_state"):  # the average and the trained weights beside it
        assert (key in ref_last) == (key in got_last)
        for name, tensor in ref_last.get(key, {}).items():
            assert torch.equal(tensor, got_last[key][name]), (key, name)
    assert ("current_model_state" in ref_last) == bool(extra)


def _reproduce(data: Path, reference: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """`lumbar-reproduce` of the tiny fold 0 against ``reference``, in a process of its own."""
    cmd = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.reproduce",
        f"data_dir={data}",
        "logger=none",
        f"reference={reference}",
        f"hydra.run.dir={run_dir}",
        "threads=1",
        *TINY_CV,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_make_reproduce_finds_no_difference_for_a_recorded_fold(
    tiny_run: Path, tiny_phantom: Path, tmp_path: Path
) -> None:
    """`make reproduce` in miniature: record the tiny fold, train it again in another process, diff: empty."""
    from lumbar_lightning.engine.reproduce import record_reference

    reference = tmp_path / "reference"
    assert record_reference(tiny_run, reference) == 1
    recorded = json.loads((reference / "A1" / "fold_0.json").read_text())
    assert "seconds" not in recorded and "fit_seconds" not in recorded["grade"]["gt_box"]
    result = _reproduce(tiny_phantom, reference, tmp_path / "again")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fold 0 rater A1: identical to" in result.stdout + result.stderr


def test_any_difference_is_reported_with_its_path() -> None:
    from lumbar_lightning.engine.reproduce import diff_metrics

    a = {
        "grade": {"chained": {"accuracy": 0.9, "confusion_matrix": [[3, 1], [0, 2]]}, "seconds": 5.0},
        "x": float("nan"),
    }
    b = {
        "grade": {"chained": {"accuracy": 0.9, "confusion_matrix": [[3, 1], [1, 1]]}, "seconds": 9.0},
        "x": float("nan"),
    }
    assert diff_metrics(comparable(a), comparable(b)) == [
        "grade/chained/confusion_matrix[1][0]: 0 -> 1",
        "grade/chained/confusion_matrix[1][1]: 2 -> 1",
    ]
    assert diff_metrics(comparable(a), comparable(a)) == []
    assert diff_metrics({"k": 1}, {}) == ["k: 1 -> missing"]


# ------------------------------------------------------------------------------------------- lumbar-cv, killed
CV_FOLDS = ["cv.folds=[0,1]", *LONGER_GRADE]


def _cv_cmd(data: Path, run_dir: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.cv",
        f"data_dir={data}",
        "logger=csv",
        f"cv.workers={workers}",
        f"hydra.run.dir={run_dir}",
        *TINY_CV,
        *CV_FOLDS,
    ]


def _cv_results(run_dir: Path) -> tuple[dict, dict]:
    summary = json.loads((run_dir / "cv_summary.json").read_text())
    folds = {
        str(p.relative_to(run_dir)): comparable(json.loads(p.read_text()))
        for p in sorted(run_dir.glob("*/fold_*/metrics.json"))
    }
    return comparable(summary), folds


@pytest.fixture(scope="module")
def uninterrupted_cv(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    run = tmp_path_factory.mktemp("cv_ref") / "run"
    result = subprocess.run(_cv_cmd(tiny_phantom, run, 2), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return _cv_results(run)


@pytest.mark.parametrize(
    ("workers", "kill_when"),
    [
        # make test-full (87 s with its reference run): make test keeps a killed fold's resume
        # (test_killed_mid_stage_then_resumed_equals_uninterrupted) and the workers' death with lumbar-cv
        pytest.param(2, "A1/fold_*/checkpoints/grade/last.ckpt", marks=pytest.mark.slow),
        pytest.param(1, "A2/fold_0/checkpoints/rootlet/last.ckpt", marks=pytest.mark.slow),
    ],
)
def test_killed_cv_resumes_to_the_uninterrupted_summary(
    uninterrupted_cv: tuple[dict, dict], tiny_phantom: Path, tmp_path: Path, workers: int, kill_when: str
) -> None:
    """`kill -9` of lumbar-cv itself (its workers must die with it, not train on), then the same command again:
    cv_summary.json and every fold's metrics equal an uninterrupted run's."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cv_cmd(tiny_phantom, run, workers), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not list(run.glob(kill_when)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    proc.kill()  # SIGKILL to lumbar-cv alone, as `kill -9 PID` does
    proc.wait()
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    zombies_or_alive = [
        c
        for c in children
        if Path(f"/proc/{c}").exists()
        and "Z" not in Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0]
    ]
    assert not zombies_or_alive, "the CV's workers outlived it"
    assert not (run / "cv_summary.json").exists(), "the kill came too late"
    resumed = subprocess.run(_cv_cmd(tiny_phantom, run, workers), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary, folds = _cv_results(run)
    ref_summary, ref_folds = uninterrupted_cv
    assert folds == ref_folds
    assert summary == ref_summary


def test_tolerance_is_the_prediction_interval_of_the_recorded_seeds(tmp_path: Path) -> None:
    from lumbar_lightning.engine.reproduce import SPREAD_FILE, tolerance_for

    values = {
        "grade/chained/accuracy": [0.90, 0.92, 0.94],
        "splits/test/images": [40.0, 40.0, 40.0],
        "grade/chained/confusion_matrix[0][0]": [10.0, 12.0, 11.0],
    }
    (tmp_path / SPREAD_FILE).write_text(json.dumps({"values": {"A1": values}}))
    tol = tolerance_for(tmp_path, "A1")
    # t(0.995, 2 dof) = 9.925, sd = 0.02, sqrt(1 + 1/3): a new seed lands there 99% of the time
    assert tol["grade/chained/accuracy"] == pytest.approx(9.9248 * 0.02 * (4 / 3) ** 0.5, rel=1e-3)
    assert tol["splits/test/images"] == 0.0
    assert "grade/chained/confusion_matrix[0][0]" not in tol  # moves with accuracy; not judged alone
    assert tolerance_for(tmp_path, "A2") is None


def test_a_changed_environment_is_judged_within_tolerance() -> None:
    from lumbar_lightning.engine.reproduce import diff_metrics

    expected = {"grade": {"chained": {"accuracy": 0.90, "f1_per_class": {"D": 0.5}}}, "splits": {"n": 40}}
    tol = {"grade/chained/accuracy": 0.05, "splits/n": 0.0}
    near = {"grade": {"chained": {"accuracy": 0.94, "f1_per_class": {"D": 0.1}}}, "splits": {"n": 40}}
    far = {"grade": {"chained": {"accuracy": 0.96, "f1_per_class": {"D": 0.5}}}, "splits": {"n": 41}}
    assert diff_metrics(expected, near, tol) == []
    assert diff_metrics(expected, far, tol) == [
        "grade/chained/accuracy: 0.9 -> 0.96 (allowed +-0.05, from the seed-to-seed spread)",
        "splits/n: 40 -> 41 (allowed +-0, from the seed-to-seed spread)",
    ]
    assert len(diff_metrics(expected, near)) == 2  # bit for bit, both entries differ


def test_reproduce_names_the_changed_environment_and_fails_outside_the_spread(
    tiny_run: Path, tiny_phantom: Path, tmp_path: Path
) -> None:
    from lumbar_lightning.engine.reproduce import ENVIRONMENT_FILE, SPREAD_FILE, leaves, record_reference

    reference = tmp_path / "reference"
    record_reference(tiny_run, reference)
    env = json.loads((reference / ENVIRONMENT_FILE).read_text())
    env["numerics"]["packages"]["numpy"] = "0.0.1"  # as if recorded under another lock
    (reference / ENVIRONMENT_FILE).write_text(json.dumps(env))
    fold = json.loads((reference / "A1" / "fold_0.json").read_text())
    accuracy = fold["grade"]["chained"]["accuracy"]
    spread = {path: [v, v + 0.01, v - 0.01] for path, v in leaves(fold).items() if isinstance(v, float)}
    (reference / SPREAD_FILE).write_text(json.dumps({"values": {"A1": spread}}))
    fold["grade"]["chained"]["accuracy"] = accuracy + 0.5  # far outside a 0.01 seed-to-seed spread
    (reference / "A1" / "fold_0.json").write_text(json.dumps(fold))
    result = _reproduce(tiny_phantom, reference, tmp_path / "again")
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert "the environment differs from the reference's in: packages/numpy" in log
    assert "grade/chained/accuracy" in log and "1 difference(s)" in log


def test_the_spread_reads_each_seed_of_a_multi_seed_run(tmp_path: Path) -> None:
    """``spread=`` takes ``seed_<s>/`` folders of a ``seeds=[...]`` run, which hold no Hydra config of their own:
    the seed comes from the config each fold saved, else from Hydra's."""
    from lumbar_lightning.engine.reproduce import run_seed

    fold = tmp_path / "seeds" / "seed_3" / "A1" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "config.yaml").write_text("seed: 3\n")
    hydra_only = tmp_path / "run" / ".hydra"
    hydra_only.mkdir(parents=True)
    (hydra_only / "config.yaml").write_text("seed: 7\n")
    assert run_seed(tmp_path / "seeds" / "seed_3") == 3
    assert run_seed(tmp_path / "run") == 7
    assert run_seed(tmp_path / "nothing") is None
