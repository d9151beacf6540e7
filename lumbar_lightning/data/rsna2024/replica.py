"""``lumbar-synth format=rsna2024``: a phantom cohort written in the RSNA 2024 download's layout, to test the adapter on.

The phantom is generated as usual (a temporary data-contract cohort), then rewritten the way the challenge ships
its data: ``train_images/<study_id>/<series_id>/<instance_number>.dcm`` with an Axial T2 series and a Sagittal
T2/STIR series reformatted from it, and the three CSVs. Per study and disc level one axial slice is labelled: its
left and right subarticular points lie on the canal box's lateral edges, the canal point on the mid-sagittal
slice, and the three-class label is the first rater's Schizas grade read as RSNA severity (A Normal/Mild,
B Moderate, C and D Severe), so it carries that rater's noise as the real labels carry their annotators'.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom

from lumbar_lightning.data.dicom.writer import SeriesInfo, write_mr_slice
from lumbar_lightning.data.phantom.families import ensure_phantom
from lumbar_lightning.data.rsna2024 import layout

#: How the replica reads a Schizas grade as RSNA severity.
SCHIZAS_TO_RSNA = {"A": "Normal/Mild", "B": "Moderate", "C": "Severe", "D": "Severe"}
#: Sagittal slices written per study, in pixels either side of the canal's centre.
SAGITTAL_OFFSETS_PX = (-12, -6, 0, 6, 12)


def write_replica(
    config: Any, out_dir: Path | str, rater: str = "A1", workers: int | None = None
) -> dict[str, int]:
    """Generate the phantom ``config`` describes and write it to ``out_dir`` in the RSNA 2024 layout.

    Returns counts (studies, axial images, labelled levels)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rsna-replica-", dir=out_dir) as tmp:
        phantom = Path(tmp)
        ensure_phantom(phantom, config, workers=workers)
        return _rewrite(phantom, out_dir, rater)


def _rewrite(phantom: Path, out: Path, rater: str) -> dict[str, int]:
    labels = pd.read_csv(phantom / "labels.csv", dtype=str, keep_default_na=False)
    labels = labels[labels["analyzer"] == rater].set_index("sop_instance_uid")
    shutil.rmtree(out / layout.IMAGES_DIR, ignore_errors=True)
    series_rows, coordinate_rows, train_rows = [], [], []
    images = 0
    for index, patient_dir in enumerate(sorted(p for p in (phantom / "dicom").iterdir() if p.is_dir())):
        study_id = 4_000_000 + 1_009 * index  # integer ids, as the challenge gives them
        axial_id, sagittal_id = 10 * study_id + 3, 10 * study_id + 1
        slices = sorted(
            (pydicom.dcmread(f) for f in patient_dir.glob("*.dcm")), key=lambda d: int(d.InstanceNumber)
        )
        volume = np.stack([d.pixel_array for d in slices])
        for ds in slices:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = str(study_id), str(axial_id)
            ds.SeriesDescription = "AX T2"
            ds.PatientID = str(study_id)
            path = out / layout.IMAGES_DIR / str(study_id) / str(axial_id) / f"{int(ds.InstanceNumber)}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
        images += len(slices)
        series_rows += [
            (study_id, sagittal_id, layout.SAGITTAL_T2),
            (study_id, axial_id, layout.AXIAL_T2),
        ]
        chosen = _one_slice_per_level(slices, labels)
        centre_x = (
            int(np.median([(float(r["x_min"]) + float(r["x_max"])) / 2 for _, r in chosen]))
            if chosen
            else volume.shape[2] // 2
        )
        sagittal_scale = _write_sagittal(volume, slices, out, study_id, sagittal_id, centre_x)
        train: dict[str, str] = {"study_id": str(study_id), **dict.fromkeys(layout.LABEL_COLUMNS, "")}
        for ds, row in chosen:
            level, grade = row["vertebral_level"], SCHIZAS_TO_RSNA[row["grade"]]
            x0, y0, x1, y1 = (float(row[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
            y_mid = (y0 + y1) / 2
            instance = int(ds.InstanceNumber)
            # the patient's left is the image's right (radiological convention)
            coordinate_rows += [
                (
                    study_id,
                    axial_id,
                    instance,
                    layout.LEFT_SUBARTICULAR,
                    level,
                    round(x1, 3),
                    round(y_mid, 3),
                ),
                (
                    study_id,
                    axial_id,
                    instance,
                    layout.RIGHT_SUBARTICULAR,
                    level,
                    round(x0, 3),
                    round(y_mid, 3),
                ),
                (
                    study_id,
                    sagittal_id,
                    1 + len(SAGITTAL_OFFSETS_PX) // 2,
                    layout.CANAL,
                    level,
                    round(y_mid, 3),
                    round((len(slices) - instance + 0.5) * sagittal_scale, 3),
                ),
            ]
            for condition in (layout.CANAL, layout.LEFT_SUBARTICULAR, layout.RIGHT_SUBARTICULAR):
                train[layout.label_column(condition, level)] = grade
            for side in ("Left", "Right"):
                train[layout.label_column(f"{side} Neural Foraminal Narrowing", level)] = "Normal/Mild"
        train_rows.append(train)
    _write_csv(out / layout.SERIES_CSV, layout.SERIES_COLUMNS, series_rows)
    _write_csv(out / layout.COORDINATES_CSV, layout.COORDINATE_COLUMNS, coordinate_rows)
    _write_csv(
        out / layout.TRAIN_CSV, ("study_id", *layout.LABEL_COLUMNS), [tuple(r.values()) for r in train_rows]
    )
    return {"studies": len(train_rows), "axial_images": images, "labelled_levels": len(coordinate_rows) // 3}


def _one_slice_per_level(slices: list[pydicom.Dataset], labels: pd.DataFrame) -> list[tuple[Any, pd.Series]]:
    """For each disc level the rater graded, its middle graded slice (the challenge labels one slice a level)."""
    by_level: dict[str, list[tuple[Any, pd.Series]]] = {}
    for ds in slices:
        uid = str(ds.SOPInstanceUID)
        if (
            uid in labels.index
            and labels.at[uid, "grade"]
            and labels.at[uid, "vertebral_level"] in layout.LEVELS
        ):
            row = labels.loc[uid]
            by_level.setdefault(row["vertebral_level"], []).append((ds, row))
    return [rows[len(rows) // 2] for _, rows in sorted(by_level.items())]


def _write_sagittal(
    volume: np.ndarray, slices: list[pydicom.Dataset], out: Path, study_id: int, series_id: int, centre_x: int
) -> float:
    """Sagittal reformats of the axial stack (superior at the top), resampled to square pixels; returns the rows
    per axial slice."""
    first = slices[0]
    spacing = float(first.PixelSpacing[0])
    step = float(getattr(first, "SpacingBetweenSlices", first.SliceThickness))
    scale = step / spacing
    rows = round(len(slices) * scale)
    source_rows = np.minimum((np.arange(rows) / scale).astype(int), len(slices) - 1)
    info = SeriesInfo(
        patient_id=str(study_id),
        study_uid=str(study_id),
        series_uid=str(series_id),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        pixel_spacing=spacing,
        slice_thickness=3.0,
        spacing_between_slices=3.0,
        series_description="SAG T2",
        series_number=1,
        orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    )
    top = volume[::-1]  # the highest slice first
    for k, offset in enumerate(SAGITTAL_OFFSETS_PX, start=1):
        x = int(np.clip(centre_x + offset, 0, volume.shape[2] - 1))
        image = np.ascontiguousarray(top[source_rows, :, x]).astype(np.uint16)
        write_mr_slice(
            out / layout.IMAGES_DIR / str(study_id) / str(series_id) / f"{k}.dcm",
            image,
            info,
            f"{study_id}.{series_id}.{k}",
            instance_number=k,
            position=(x * spacing, 0.0, 0.0),
        )
    return scale


def _write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
