"""``lumbar-predict``: a study folder of any layout in, per-image predictions, a per-level summary and overlays out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from lumbar_lightning.data.dicom.writer import deterministic_uid
from lumbar_lightning.data.grading import SCHIZAS

GRADES = SCHIZAS.classes


def _predict(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lumbar_lightning.cli.predict", "progress=false", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _messy_study(phantom: Path, dest: Path) -> tuple[Path, int]:
    """One phantom patient's axial series in a hospital-export layout, plus a sagittal series, a localizer and a
    junk file; returns the folder and the number of axial slices."""
    patient = sorted((phantom / "dicom").iterdir())[0]
    files = sorted(patient.glob("*.dcm"))
    for i, f in enumerate(files):
        shutil.copy(f, dest / "export" / "SE0003" / f"{1000 - i}")  # no suffix, names against slice order
    for kind, orientation, image_type in (("sag", [0, 1, 0, 0, 0, -1], None), ("loc", None, "LOCALIZER")):
        for i, f in enumerate(files[:3]):
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = deterministic_uid("other", kind)
            ds.SOPInstanceUID = deterministic_uid("other", kind, i)
            ds.SeriesDescription = f"t2_{kind}"
            if orientation:
                ds.ImageOrientationPatient = orientation
            if image_type:
                ds.ImageType = ["ORIGINAL", "PRIMARY", image_type]
            ds.save_as(dest / "export" / kind / f"{i}.dcm")
    (dest / "export" / "DICOMDIR.txt").write_text("not an image")
    return dest / "export", len(files)


@pytest.fixture(scope="module")
def prediction(tiny_run: Path, tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("predict")
    for sub in ("SE0003", "sag", "loc"):
        (root / "export" / sub).mkdir(parents=True)
    source, n_axial = _messy_study(tiny_phantom, root)
    out = root / "out"
    result = _predict(
        f"run_dir={tiny_run}", f"input={source}", f"out_dir={out}", f"hydra.run.dir={root / 'h'}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "n_axial": n_axial, "log": result.stdout + result.stderr, "source": source}


def test_predict_grades_the_axial_series_only_and_says_which(prediction: dict) -> None:
    out = prediction["out"]
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(preds) == prediction["n_axial"] and preds["series_instance_uid"].nunique() == 1
    assert (preds["slice_position"].diff().dropna() > 0).all()  # slice order along the normal
    assert list(preds["slice_index"]) == list(range(len(preds)))
    series = pd.read_csv(out / "series.csv", keep_default_na=False)
    chosen = series[series["chosen"]]
    assert list(chosen["description"]) == ["t2_tse_tra"] and chosen["reason"].iloc[0] == "axial T2"
    reasons = dict(zip(series["description"], series["reason"], strict=True))
    assert reasons["t2_loc"] == "localizer" and reasons["t2_sag"].startswith("sagittal")
    assert "series 't2_tse_tra'" in prediction["log"] and "chosen" in prediction["log"]
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped["path"]) == ["DICOMDIR.txt"] and "not a DICOM file" in skipped["reason"].iloc[0]
    # Chained-pipeline invariants: probabilities, level and grade agree with each other.
    assert ((preds[[f"p_{g}" for g in GRADES]].sum(axis=1) - 1).abs() < 1e-3).all()
    assert ((preds["rootlet_prob"] >= 0.5) == (preds["pred_level"] == "rootlet")).all()
    assert (preds.loc[preds["pred_level"] == "cord", "pred_grade"] == "").all()
    assert not preds["patient"].str.startswith("PHANTOM").any()


def test_summary_is_the_worst_grade_per_level_and_overlays_exist(prediction: dict) -> None:
    out = prediction["out"]
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert set(summary["vertebral_level"]) == set(preds["vertebral_level"])
    assert (summary["level_source"] == "estimated").all()
    for row in summary.itertuples():
        graded = preds[(preds["vertebral_level"] == row.vertebral_level) & (preds["pred_grade"] != "")]
        worst = max(graded["pred_grade"], key=GRADES.index) if len(graded) else ""
        assert (
            row.worst_grade == worst and row.slices == (preds["vertebral_level"] == row.vertebral_level).sum()
        )
    assert (preds["refer"] == (preds["confidence"] < 0.6) | (preds["fold_agreement"] < 0.7)).all()
    want = np.where(preds["pred_grade"] != "", preds[["p_A", "p_B", "p_C", "p_D"]].max(axis=1), 1.0)
    level = np.maximum(preds["rootlet_prob"], 1 - preds["rootlet_prob"])
    np.testing.assert_allclose(preds["confidence"], np.minimum(level, want), atol=2e-4)
    assert summary["referred_slices"].sum() == preds["refer"].sum()
    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == len(preds) and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The box is drawn where it was detected, red on a severe grade and green otherwise.
    import cv2

    from lumbar_lightning.inference.predict import MILD_BGR, SEVERE_BGR, overlay_png

    row = preds.iloc[0].to_dict()
    image = np.zeros((100, 80), np.float32)
    for grade, colour in (("D", SEVERE_BGR), ("A", MILD_BGR)):
        path = out / f"check_{grade}.png"
        overlay_png(
            image,
            {
                **row,
                "pred_grade": grade,
                "pred_x_min": 20,
                "pred_x_max": 40,
                "pred_y_min": 50,
                "pred_y_max": 70,
            },
            path,
            width=160,
        )
        drawn = cv2.imread(str(path))
        assert drawn.shape == (200 + 34, 160, 3)  # scaled 2x, a caption band on top
        assert tuple(drawn[34 + 100, 40 + 20]) == colour and tuple(drawn[34 + 120, 60]) == (0, 0, 0)


def test_known_levels_are_used_and_an_ensemble_of_equal_folds_equals_one(
    prediction: dict, tiny_run: Path, tiny_phantom: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "A1" / "fold_0", run / "A1" / "fold_0")
    shutil.copytree(tiny_run / "A1" / "fold_0", run / "A1" / "fold_3")  # two folds with identical weights
    result = _predict(
        f"run_dir={run}",
        f"input={prediction['source']}",
        f"out_dir={tmp_path / 'out'}",
        f"levels={tiny_phantom / 'labels.csv'}",
        "overlays=false",
        f"hydra.run.dir={tmp_path / 'h'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 fold(s) of rater A1: fold_0, fold_3" in result.stdout + result.stderr
    single = pd.read_csv(prediction["out"] / "predictions.csv", keep_default_na=False)
    ensemble = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    columns = ["pred_level", "pred_grade", "rootlet_prob", "p_A", "p_D", "pred_x_min"]
    pd.testing.assert_frame_equal(single[columns], ensemble[columns], atol=1e-3)
    labels = pd.read_csv(tiny_phantom / "labels.csv", keep_default_na=False).drop_duplicates(
        "sop_instance_uid"
    )
    truth = dict(zip(labels["sop_instance_uid"], labels["vertebral_level"], strict=True))
    assert list(ensemble["vertebral_level"]) == [truth[u] for u in ensemble["sop_instance_uid"]]
    assert (ensemble["level_source"] == "labels").all()
    # Equal folds always agree: referral is by confidence alone, as the config's threshold says.
    assert (ensemble["fold_agreement"] == 1.0).all()
    assert (ensemble["refer"] == (ensemble["confidence"] < 0.6)).all()


@pytest.mark.slow  # make test-full: 19 s
def test_a_checkpoint_from_another_model_config_is_refused_clearly(
    prediction: dict, tiny_run: Path, tmp_path: Path
) -> None:
    fold = tmp_path / "fold"
    shutil.copytree(tiny_run / "A1" / "fold_0", fold)
    spec = json.loads((fold / "pipeline.json").read_text())
    spec["stages"]["grade"]["hparams"]["width"] = 0.25
    (fold / "pipeline.json").write_text(json.dumps(spec))
    result = _predict(
        f"run_dir={fold}",
        f"input={prediction['source']}",
        f"out_dir={tmp_path / 'o'}",
        f"hydra.run.dir={tmp_path / 'h'}",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "grade/best.ckpt was trained with another model config: width=0.125 (run config: 0.25)"
        in result.stderr
    )
    spec["stages"]["grade"]["class"] = "os.system"
    (fold / "pipeline.json").write_text(json.dumps(spec))
    result = _predict(f"run_dir={fold}", f"input={prediction['source']}", f"hydra.run.dir={tmp_path / 'h2'}")
    assert result.returncode == 2 and "only GradeClassifier is accepted" in result.stderr


def test_a_millimetre_field_names_the_slices_without_pixel_spacing_before_grading(
    prediction: dict, tiny_run: Path, tmp_path: Path
) -> None:
    """A fold whose patches are cut in millimetres (here set in its saved spec) refuses, before grading anything,
    a study with a slice that has no PixelSpacing, and names that file; the box-relative run grades the same
    slice."""
    fold = tmp_path / "fold"
    shutil.copytree(tiny_run / "A1" / "fold_0", fold)
    source = tmp_path / "in"
    shutil.copytree(prediction["source"] / "SE0003", source)
    victim = sorted(source.iterdir())[2]
    ds = pydicom.dcmread(victim)
    del ds.PixelSpacing
    ds.save_as(victim)
    box_relative = _predict(f"run_dir={fold}", f"input={source}", f"hydra.run.dir={tmp_path / 'h0'}")
    assert box_relative.returncode == 0, box_relative.stderr[-3000:]
    spec = json.loads((fold / "pipeline.json").read_text())
    spec["geometry"]["grade"]["field_mm"] = 20.0
    (fold / "pipeline.json").write_text(json.dumps(spec))
    out = tmp_path / "o"
    result = _predict(
        f"run_dir={fold}", f"input={source}", f"out_dir={out}", f"hydra.run.dir={tmp_path / 'h'}"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{victim}: no usable PixelSpacing, and patch.field_mm=20 cuts patches" in result.stderr
    assert (out / "series.csv").is_file() and not (out / "predictions.csv").exists()


def test_nothing_readable_exits_non_zero_with_one_sentence(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(b"junk")
    result = _predict(f"run_dir={tiny_run}", f"input={tmp_path / 'in'}", f"hydra.run.dir={tmp_path / 'h'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: nothing to grade under" in result.stderr and "1 file(s) skipped" in result.stderr


def test_estimated_levels_count_up_from_the_lowest_slice() -> None:
    from lumbar_lightning.inference.predict import estimated_levels

    positions = np.array([-50.0, -23.1, -22.9, 0.0, 13.0, 130.0, 180.0])  # order does not matter
    levels = estimated_levels(positions, segment_mm=36.0, offset=0.25)
    # Boundaries at -50 + 36 * (k - 0.25): -23.0, 13.0, 49.0, 85.0, 121.0, 157.0
    assert levels == ["L5/S1", "L5/S1", "L4/L5", "L4/L5", "L3/L4", "T12/L1", "above T12/L1"]


def test_serving_a_run_imports_no_lightning_torchmetrics_or_matplotlib() -> None:
    """lumbar-predict starts a fresh process per study: Lightning and torchmetrics cost it ~2 s of imports and
    matplotlib ~70 ms a slice, none of which serving needs (the stages' predictors are plain torch)."""
    code = (
        "import sys, lumbar_lightning.inference.predict, lumbar_lightning.cli.predict; "
        "print(sorted(m for m in ('lightning', 'torchmetrics', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
