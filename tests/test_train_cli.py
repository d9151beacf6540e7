"""``lumbar-train`` end to end on a tiny phantom: a short real run with its artefacts (the fast_dev_run end to end
is ``test_entry_points.test_train_takes_data_dir``, run as the user spells it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from lumbar_lightning.inference.box_choice import SeriesBoxChoice
from lumbar_lightning.inference.ensemble import load_fold_pipeline

TINY = [
    "data.num_folds=4",
    "data.patch.size=24",
    "model.detector.module.image_size=96",
    "trainer.enable_progress_bar=false",
    "model.rootlet.module.width=0.125",
    "model.grade.module.width=0.125",
    "logger=csv",
]


def _train(data_dir: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.train",
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *TINY,
        *overrides,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_short_run_writes_checkpoints_predictions_and_metrics(tiny_phantom: Path, tmp_path: Path) -> None:
    result = _train(
        tiny_phantom,
        tmp_path / "run",
        "data.rater=A2",
        "model.detector.trainer.max_epochs=1",
        "+model.detector.trainer.limit_train_batches=2",
        "model.rootlet.trainer.max_epochs=1",
        "model.grade.trainer.max_epochs=2",
        "model.grade.samples_per_epoch=64",
        "model.rootlet.samples_per_epoch=64",
        "model.baseline.trainer.max_epochs=1",
        "model.baseline.samples_per_epoch=64",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run" / "A2" / "fold_0"
    for stage in ("detector", "rootlet", "grade"):
        for name in ("best.ckpt", "last.ckpt"):
            ckpt = torch.load(out / "checkpoints" / stage / name, map_location="cpu", weights_only=True)
            assert "state_dict" in ckpt
    # the fold's box choice is plain data in pipeline.json, rebuilt as configured; a spec from before it: top box
    spec = json.loads((out / "pipeline.json").read_text())
    assert spec["box_choice"] == {"sigma_mm": 8.0, "window": 3, "min_score": 0.5, "max_mm": 20.0}
    assert load_fold_pipeline(out).box_choice == SeriesBoxChoice()
    assert spec["grade_shift_tta_mm"] == 0.0  # the grade stage's default: one reading, as in the paper
    older = tmp_path / "older"
    shutil.copytree(out, older)
    recorded = {k: v for k, v in spec.items() if k not in ("box_choice", "grade_shift_tta_mm")}
    (older / "pipeline.json").write_text(json.dumps(recorded))
    assert (
        load_fold_pipeline(older).box_choice is None and load_fold_pipeline(older).grade_shift_tta_mm == 0.0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    grade = metrics["grade"]
    assert {"gt_box", "chained", "chained_balanced"} <= set(grade)
    assert grade["chained"]["n"] > 0 and len(grade["chained"]["confusion_matrix"]) == 4
    assert 0 <= metrics["detector"]["test/acc"] <= 1 and "test/map_50" in metrics["detector"]
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    expected = {
        "sop_instance_uid",
        "patient",
        "fold",
        "level_A1",
        "grade_A1",
        "level_A2",
        "grade_A2",
        "level_truth",
        "pred_x_min",
        "box_score",
        "rootlet_prob",
        "p_A",
        "p_D",
        "pred_level",
        "pred_grade",
        "gt_box_level",
        "gt_box_grade",
    }
    assert expected <= set(preds.columns)
    probs = preds[["p_A", "p_B", "p_C", "p_D"]].sum(axis=1)
    assert ((probs - 1).abs() < 1e-3).all()
    assert (preds.loc[preds["pred_level"] == "cord", "pred_grade"] == "").all()
    assert not preds["patient"].str.startswith("PHANTOM").any()  # pseudonyms, never PatientID
