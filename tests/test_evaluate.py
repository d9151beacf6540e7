"""``lumbar-evaluate``: a finished run's fold ensemble graded on another cohort, with the study's tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lumbar_lightning.evaluation.study import load_cv_predictions, task_set


@pytest.fixture(scope="module")
def other_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second phantom cohort (other seed, other patients) the tiny run never saw."""
    from lumbar_lightning.data.phantom.cohort import PhantomCohort, PhantomConfig

    root = tmp_path_factory.mktemp("other")
    PhantomCohort.generate(
        PhantomConfig(n_patients=4, seed=11, image_size=128, pixel_spacing_mm=1.72), root, workers=1
    )
    return root


def test_external_validation_writes_the_study_tables(
    tiny_run: Path, other_cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    cmd = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.evaluate",
        f"run_dir={tiny_run}",
        f"data_dir={other_cohort}",
        "logger=none",
        f"hydra.run.dir={out}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    preds = pd.read_csv(out / "A1" / "fold_external" / "predictions.csv", keep_default_na=False)
    truth = pd.read_csv(other_cohort / "truth.csv")
    assert sorted(preds["sop_instance_uid"]) == sorted(
        truth["sop_instance_uid"]
    )  # every labelled image, once
    summary = json.loads((out / "cv_summary.json").read_text())
    assert {"A1-A2", "A1-C1", "truth-C1", "truth-A1"} <= set(summary["grade"])
    frame = task_set(load_cv_predictions(out), "grade")
    assert summary["grade"]["A1-C1"]["n"] == len(frame)
    graded = frame[frame["grade_truth"] != ""]  # the pair's own images: both readers graded them
    assert summary["grade"]["truth-C1"]["n"] == len(graded)
    assert summary["grade"]["truth-C1"]["accuracy"] == pytest.approx(
        (graded["grade_truth"] == graded["grade_C1"]).mean()
    )
    # the level's tables too: an external validation has no fold metrics to tell that the run has the stage
    levels = task_set(load_cv_predictions(out), "rootlet")
    assert {"A1-A2", "A1-C1", "truth-C1"} <= set(summary["rootlet"])
    assert summary["rootlet"]["A1-C1"]["n"] == len(levels) > 0
    assert summary["rootlet"]["A1-C1"]["accuracy"] == pytest.approx(
        (levels["level_A1"] == levels["level_C1"]).mean()
    )
    det = summary["detection"]["A1"]
    assert det["n"] == len(truth) and 0.0 <= det["rate"] <= 1.0 and 0.0 <= det["iou"] <= 1.0
    report = (out / "report.md").read_text()
    assert "external validation" in report and "## Detection" in report and "## Severe grades" in report
    assert "## Rootlet / cord" in report
    # the worst cases on the other data set: the most confident wrong grades, against its truth, drawn
    cases = summary["worst_cases"]
    assert 0 < len(cases) <= 12 and all(c["fold"] == "external" for c in cases)
    order = {g: i for i, g in enumerate("ABCD")}
    for c in cases:  # the reference is the other data set's truth, and every case is wrong
        assert c["pred_grade"] != c["reference"] and c["distance"] == abs(
            order[c["pred_grade"]] - order[c["reference"]]
        )
    assert [c["distance"] for c in cases] == sorted((c["distance"] for c in cases), reverse=True)
    assert "## Worst cases" in report and (out / "figures" / "worst_cases.png").stat().st_size > 0


def test_a_folder_without_trained_folds_is_refused(other_cohort: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.evaluate",
        f"run_dir={tmp_path}",
        f"data_dir={other_cohort}",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'eval'}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no trained fold" in result.stderr


def _own_folds(tiny_run: Path, out: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.evaluate",
        f"run_dir={tiny_run}",
        "folds=own",
        "logger=none",
        f"hydra.run.dir={out}",
        *overrides,
    ]


def test_own_folds_read_as_recorded_give_the_run_itself(tiny_run: Path, tmp_path: Path) -> None:
    """Read again with nothing changed, each fold grades its own test patients exactly as its training run did:
    the checkpoints, pipeline.json and the run's data set are all it takes."""
    from hydra import compose, initialize_config_dir

    from lumbar_lightning.conf import CONF_DIR
    from lumbar_lightning.evaluation.own_folds import evaluate_own_folds

    recorded = (tiny_run / "A1" / "fold_0" / "predictions.csv").read_text()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"run_dir={tiny_run}", "folds=own", "logger=none"])
    summary = evaluate_own_folds(cfg, tmp_path / "again")
    again = tmp_path / "again" / "A1" / "fold_0"
    pd.testing.assert_frame_equal(
        pd.read_csv(again / "predictions.csv", keep_default_na=False),
        pd.read_csv(tiny_run / "A1" / "fold_0" / "predictions.csv", keep_default_na=False),
    )
    before = json.loads((tiny_run / "A1" / "fold_0" / "metrics.json").read_text())
    after = json.loads((again / "metrics.json").read_text())
    assert after["grade"]["chained"] == before["grade"]["chained"]
    assert after["detector"] == before["detector"]  # training-side entries are the run's own
    assert summary["read_again"]["serve"] == {
        "flip_tta": None,
        "box_choice": None,
        "grade_shift_tta_mm": None,
    }
    assert (
        tiny_run / "A1" / "fold_0" / "predictions.csv"
    ).read_text() == recorded  # the run is never written


def test_own_folds_read_with_the_mirror_and_the_top_box(tiny_run: Path, tmp_path: Path) -> None:
    from lumbar_lightning.evaluation.chained import chained_metrics
    from lumbar_lightning.inference.ensemble import load_fold_pipeline

    out = tmp_path / "mirror"
    cmd = _own_folds(
        tiny_run, out, "serve.flip_tta=true", "serve.box_choice=false", "serve.grade_shift_tta_mm=1.5"
    )
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    fold = tiny_run / "A1" / "fold_0"
    recorded = pd.read_csv(fold / "predictions.csv", keep_default_na=False)
    mirror = pd.read_csv(out / "A1" / "fold_0" / "predictions.csv", keep_default_na=False)
    assert list(mirror["sop_instance_uid"]) == list(recorded["sop_instance_uid"])  # the same test images
    probs = [c for c in recorded if c.startswith("p_") and not c.endswith("_balanced")]
    assert (mirror[probs] - recorded[probs]).abs().to_numpy().max() > 1e-3  # a trained net is not mirror-even
    # What the command wrote is what the fold's pipeline read that way gives.
    pipeline = load_fold_pipeline(
        fold, serve={"flip_tta": True, "box_choice": False, "grade_shift_tta_mm": 1.5}
    )
    assert pipeline.grade.flip_tta and pipeline.rootlet.flip_tta and pipeline.box_choice is None
    assert pipeline.grade_shift_tta_mm == 1.5 and load_fold_pipeline(fold).grade_shift_tta_mm == 0.0
    metrics = json.loads((out / "A1" / "fold_0" / "metrics.json").read_text())
    assert metrics["grade"]["chained"]["accuracy"] == pytest.approx(
        chained_metrics(mirror, "A1")[1]["accuracy"]
    )
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["read_again"]["serve"] == {
        "flip_tta": True,
        "box_choice": False,
        "grade_shift_tta_mm": 1.5,
    }
    assert "read again" in (out / "report.md").read_text()


def test_unknown_serving_settings_are_refused() -> None:
    from lumbar_lightning.data.errors import DataContractError
    from lumbar_lightning.inference.ensemble import Serving

    with pytest.raises(DataContractError, match=r"unknown setting\(s\) \['flip'\]"):
        Serving.of({"flip": True})
    assert Serving.of({"box_choice": {"sigma_mm": 4}}).box_choice == {"sigma_mm": 4}
