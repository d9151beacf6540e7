"""Prediction (``lumbar-predict``): the trained pipeline on a DICOM folder of any layout.

Per study, the axial T2 series is chosen (``data/series.py``) and every slice goes through detector, rootlet
classifier and grader, with one fold's checkpoints or the mean of several folds' (an ensemble). Writes
``predictions.csv`` (per image), ``summary.csv`` (worst grade per study and vertebral level), ``series.csv`` (which
series each study used, and why the others were not), ``skipped.csv`` and overlay PNGs.

Models come from ``inference/ensemble.py``: rebuilt from plain data, nothing from the run folder is executed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from lumbar_lightning.data.dicom.cache import ImageCache
from lumbar_lightning.data.dicom.scan import scan_dicom
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.grading import active
from lumbar_lightning.data.labels import grades
from lumbar_lightning.data.series import select_series
from lumbar_lightning.data.transforms import require_pixel_spacing
from lumbar_lightning.inference.ensemble import Ensemble, fold_dirs, load_fold_pipeline
from lumbar_lightning.io import atomic_write_text

log = logging.getLogger("lumbar_lightning")

#: Disc levels from the sacrum up, for levels estimated from slice position.
LEVELS_FROM_BOTTOM = ("L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2", "T12/L1")


def estimated_levels(positions: np.ndarray, segment_mm: float, offset: float = 0.25) -> list[str]:
    """Disc level of each slice from its position along the slice normal, counting up from the lowest slice in
    steps of ``segment_mm``, the lowest slice taken ``offset`` segments into L5/S1's zone (a protocol that ends at
    S1). An estimate (88% of the phantom's labelled slices at 36 mm / 0.25): pass ``levels=`` for known levels."""
    bottom = float(np.nanmin(positions))
    index = np.floor((positions - bottom) / segment_mm + offset).astype(int)
    return [LEVELS_FROM_BOTTOM[i] if 0 <= i < len(LEVELS_FROM_BOTTOM) else "above T12/L1" for i in index]


def worst_grade_summary(frame: pd.DataFrame, classes: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Per study and vertebral level: slices, rootlet slices, and the worst (most severe) predicted grade
    (``classes``: the grader's, mild to severe; default the active grading scheme's)."""
    rank = {g: i for i, g in enumerate(classes or grades())}
    rows = []
    for (patient, series, level), part in frame.groupby(
        ["patient", "series_instance_uid", "vertebral_level"], sort=False
    ):
        graded = part[part["pred_grade"] != ""]
        worst = max(graded["pred_grade"], key=rank.__getitem__) if len(graded) else ""
        rows.append(
            {
                "patient": patient,
                "series_instance_uid": series,
                "vertebral_level": level,
                "level_source": part["level_source"].iloc[0],
                "slices": len(part),
                "rootlet_slices": int((part["pred_level"] == "rootlet").sum()),
                "referred_slices": int(part["refer"].sum()),
                "worst_grade": worst,
                "worst_grade_slice": int(graded.loc[graded["pred_grade"] == worst, "slice_index"].iloc[0])
                if worst
                else -1,
            }
        )
    return pd.DataFrame(rows)


#: Overlay colours (BGR): severe grades (C, D) in red, the rest in green.
SEVERE_BGR, MILD_BGR = (46, 87, 228), (106, 196, 41)


def overlay_png(image: np.ndarray, row: dict[str, Any], path: Path, width: int = 320) -> None:
    """The slice with the detected canal box, the level and the grade written above it.

    Drawn with OpenCV, not matplotlib: a figure per slice took ~70 ms (more than the whole study's inference),
    this takes ~1 ms, and the PNG carries no metadata.
    """
    import cv2

    scale = width / max(image.shape[1], 1)
    height = max(1, round(image.shape[0] * scale))
    grey = cv2.resize(
        (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_AREA
    )
    canvas = np.full((height + 34, width, 3), 255, np.uint8)
    canvas[34:] = grey[..., None]
    x0, y0, x1, y1 = (row[f"pred_{k}"] * scale for k in ("x_min", "y_min", "x_max", "y_max"))
    colour = SEVERE_BGR if row["pred_grade"] in active().severe else MILD_BGR
    cv2.rectangle(canvas, (round(x0), round(y0) + 34), (round(x1), round(y1) + 34), colour, 2)
    label = row["pred_level"] + (f", grade {row['pred_grade']}" if row["pred_grade"] else "")
    lines = (f"{row['patient']} slice {row['slice_index']} ({row['vertebral_level']})", label)
    for i, text in enumerate(lines):
        cv2.putText(canvas, text, (6, 14 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")


def referred(predictions: pd.DataFrame, confidence: float, fold_agreement: float) -> pd.Series:
    """Slices to send to a human: the pipeline is unsure of its call, or the folds of its ensemble disagree."""
    return (predictions["confidence"] < confidence) | (predictions["fold_agreement"] < fold_agreement)


def input_folder(cfg: DictConfig) -> Path:
    """``input=`` (any DICOM folder), else ``data_dir=``'s ``dicom/`` (a data set in the contract)."""
    if cfg.get("input"):
        source = Path(cfg.input)
    elif cfg.get("data_dir"):
        source = (
            Path(cfg.data_dir) / "dicom" if (Path(cfg.data_dir) / "dicom").is_dir() else Path(cfg.data_dir)
        )
    else:
        raise DataContractError("nothing to grade: give input=DICOM_FOLDER or data_dir=DATASET")
    if not source.is_dir():
        raise DataContractError(f"input {source} is not a folder")
    return source


def predict(cfg: DictConfig, out: Path) -> pd.DataFrame:
    """Run the pipeline on ``cfg.input``; returns the per-image predictions (also written to ``out``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    folds = fold_dirs(Path(cfg.run_dir), cfg.rater, cfg.get("fold"))
    model = Ensemble([load_fold_pipeline(d, cfg.device, cfg.get("batch_size")) for d in folds])
    log.info(f"pipeline: {len(folds)} fold(s) of rater {cfg.rater}: {', '.join(d.name for d in folds)}")
    source = input_folder(cfg)
    with tempfile.TemporaryDirectory(
        prefix="lumbar-predict-"
    ) as tmp:  # decoded images; the input stays untouched
        cache = ImageCache(Path(tmp))
        index = scan_dicom(source, cache, cfg.pseudonym_salt)
        skipped = pd.DataFrame([s.as_dict(source) for s in index.skipped], columns=["path", "reason"])
        atomic_write_text(out / "skipped.csv", skipped.to_csv(index=False))
        for s in index.skipped:
            log.warning(f"skipped {s.as_dict(source)['path']}: {s.reason}")
        images, decisions = select_series(index.images)
        series = pd.DataFrame([d.as_dict() for d in decisions])
        atomic_write_text(out / "series.csv", series.to_csv(index=False))
        if images.empty:
            raise DataContractError(
                f"nothing to grade under {source}: {len(index.images)} readable image(s), "
                f"{len(index.skipped)} file(s) skipped, no axial series"
            )
        require_pixel_spacing(model.geometries, images)
        for d in decisions:
            if d.chosen:
                log.info(
                    f"study {d.patient}: series {d.description!r} ({d.images} images) chosen: {d.reason}"
                )
            else:
                log.info(f"study {d.patient}: series {d.description!r} not used: {d.reason}")
        known = _known_levels(cfg.get("levels"))
        frames, timings = [], []
        overlays = out / "overlays"
        studies = list(images.groupby(["patient", "series_instance_uid"], sort=False))
        for (patient, series_uid), study in tqdm(
            studies, desc="studies", unit="study", disable=not cfg.progress
        ):
            start = time.perf_counter()
            pixels = [cache.get(uid) for uid in study["sop_instance_uid"]]
            preds = model.predict(
                pixels,
                pixel_mm=study["pixel_spacing_col"].astype(float).tolist(),
                position=study["slice_position"].astype(float).to_numpy(),
            )
            timings.append((len(pixels), time.perf_counter() - start))
            frame = pd.DataFrame([p.as_row() for p in preds])
            frame.insert(0, "patient", patient)
            frame.insert(1, "series_instance_uid", series_uid)
            frame.insert(2, "sop_instance_uid", [u.split("#")[0] for u in study["sop_instance_uid"]])
            frame.insert(3, "frame", study["frame"].to_numpy())
            frame.insert(4, "slice_index", np.arange(len(study)))
            frame.insert(5, "slice_position", study["slice_position"].round(3).to_numpy())
            estimated = estimated_levels(
                study["slice_position"].to_numpy(dtype=float), cfg.segment_mm, cfg.level_offset
            )
            given = [known.get(u, "") for u in study["sop_instance_uid"]]
            frame["vertebral_level"] = [g or e for g, e in zip(given, estimated, strict=True)]
            frame["level_source"] = ["labels" if g else "estimated" for g in given]
            frames.append(frame)
            if cfg.overlays:
                overlays.mkdir(exist_ok=True)
                for image, row in zip(pixels, frame.to_dict("records"), strict=True):
                    overlay_png(image, row, overlays / f"{patient}_{row['slice_index']:03d}.png")
    predictions = pd.concat(frames, ignore_index=True)
    predictions["refer"] = referred(predictions, cfg.referral.confidence, cfg.referral.fold_agreement)
    log.info(
        f"{int(predictions['refer'].sum())} of {len(predictions)} slices referred (confidence < "
        f"{cfg.referral.confidence} or fold agreement < {cfg.referral.fold_agreement})"
    )
    atomic_write_text(out / "predictions.csv", predictions.to_csv(index=False))
    atomic_write_text(
        out / "summary.csv",
        worst_grade_summary(predictions, model.pipelines[0].grade.class_names or None).to_csv(index=False),
    )
    n, seconds = (sum(v) for v in zip(*timings, strict=True))
    log.info(
        f"{len(predictions)} images of {len(studies)} studies in {seconds:.1f}s "
        f"({seconds / max(n, 1) * 40:.2f}s per 40 slices); outputs: {out}"
    )
    return predictions


def _known_levels(path: str | None) -> dict[str, str]:
    """image key -> vertebral level, from a labels/levels CSV with ``sop_instance_uid`` and ``vertebral_level``."""
    if not path:
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"sop_instance_uid", "vertebral_level"} - set(table.columns)
    if missing:
        raise DataContractError(f"{path}: line 1: missing column(s) {', '.join(sorted(missing))}")
    keys = table["sop_instance_uid"]
    if "frame" in table.columns:
        keys = [f"{u}#{f}" if f else u for u, f in zip(keys, table["frame"], strict=True)]
    return {k: v for k, v in zip(keys, table["vertebral_level"], strict=True) if v}
