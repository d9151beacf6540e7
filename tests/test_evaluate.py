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
    det = summary["detection"]["A1"]
    assert det["n"] == len(truth) and 0.0 <= det["rate"] <= 1.0 and 0.0 <= det["iou"] <= 1.0
    report = (out / "report.md").read_text()
    assert "external validation" in report and "## Detection" in report and "## Severe grades" in report


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
