"""Read an RSNA 2024 download into the data contract, without copying pixels: ``lumbar-ingest format=rsna2024``.

For each study and disc level whose left and right subarticular points both lie on one Axial T2 slice, the canal
box is centred between them and sized in millimetres from the slice's pixel spacing; its grade is that level's
``spinal_canal_stenosis`` label, its level rootlet (every labelled disc level is below the conus), its
vertebral level kept. The axial T2 series used are linked (symbolic links; ``link=copy`` where there are none)
under ``<data_dir>/dicom``. Every row it cannot use is reported with its file, line and reason, and the rest of
the data set is still used: only a missing CSV or image folder stops it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.labels import CSV_COLUMNS, parse_number
from lumbar_lightning.data.rsna2024 import layout
from lumbar_lightning.io import atomic_write_text

#: What ``dataset.json`` says about a data set this adapter wrote (LumbarDataset checks the grading against it).
DATASET_MANIFEST = "dataset.json"


@dataclass
class Problem:
    """A row (or study) the adapter could not use: the file, its 1-based line (the header is line 1), why."""

    file: str
    line: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclass
class Rsna2024Ingest:
    """What one conversion used and what it could not use."""

    labels: list[dict[str, Any]] = field(default_factory=list)
    linked_files: int = 0
    problems: list[Problem] = field(default_factory=list)
    studies: int = 0

    def report(self) -> dict[str, Any]:
        return {
            "format": "rsna2024",
            "studies": self.studies,
            "labelled_levels": len(self.labels),
            "linked_files": self.linked_files,
            "problems": [p.as_dict() for p in self.problems],
        }


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with their line numbers; a missing file or column stops the conversion, naming both."""
    if not path.is_file():
        raise DataContractError(
            f"{path}: not found (an RSNA 2024 download has {path.name} beside train_images/)"
        )
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if missing := [c for c in required if c not in header]:
            raise DataContractError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        reader.fieldnames = header
        rows = []
        for raw in reader:
            rows.append((reader.line_num, {k: (v or "").strip() for k, v in raw.items() if k is not None}))
        return rows


def _integer(value: str, column: str) -> int:
    number = parse_number(value, column)
    if not number.is_integer():
        raise ValueError(f"{column}={value!r} is not a whole number")
    return int(number)


def ingest_rsna2024(
    source: Path | str,
    data_dir: Path | str,
    rater: str = "A1",
    box_mm: tuple[float, float] = (22.0, 22.0),
    link: str = "symlink",
) -> Rsna2024Ingest:
    """Convert the download in ``source`` into the data contract in ``data_dir`` (``labels.csv``, ``dicom/``,
    ``dataset.json``, ``rsna_ingest_report.json``). ``link``: ``symlink`` (default: no pixel is copied) or
    ``copy`` (for file systems without symbolic links)."""
    source, out = Path(source), Path(data_dir)
    if link not in ("symlink", "copy"):
        raise ValueError(f"link must be 'symlink' or 'copy', got {link!r}")
    images_dir = source / layout.IMAGES_DIR
    series_rows = _read_csv(source / layout.SERIES_CSV, layout.SERIES_COLUMNS)
    train_rows = _read_csv(source / layout.TRAIN_CSV, ("study_id", *layout.LABEL_COLUMNS))
    coordinate_rows = _read_csv(source / layout.COORDINATES_CSV, layout.COORDINATE_COLUMNS)
    if not images_dir.is_dir():
        raise DataContractError(f"{images_dir}: not found (the DICOM files of an RSNA 2024 download)")
    result = Rsna2024Ingest()
    problems = result.problems

    descriptions: dict[tuple[int, int], str] = {}
    seen_series: dict[tuple[int, int], int] = {}
    for line, row in series_rows:
        try:
            key = (_integer(row["study_id"], "study_id"), _integer(row["series_id"], "series_id"))
        except ValueError as exc:
            problems.append(Problem(layout.SERIES_CSV, line, str(exc)))
            continue
        if key in seen_series:
            problems.append(Problem(layout.SERIES_CSV, line, f"duplicate of line {seen_series[key]}"))
            continue
        seen_series[key] = line
        descriptions[key] = row["series_description"]

    grades: dict[int, dict[str, str]] = {}
    train_line: dict[int, int] = {}
    for line, row in train_rows:
        try:
            study = _integer(row["study_id"], "study_id")
        except ValueError as exc:
            problems.append(Problem(layout.TRAIN_CSV, line, str(exc)))
            continue
        if study in grades:
            problems.append(
                Problem(layout.TRAIN_CSV, line, f"study {study}: duplicate of line {train_line[study]}")
            )
            continue
        train_line[study] = line
        grades[study] = {}
        for level in layout.LEVELS:
            column = layout.label_column(layout.CANAL, level)
            value = row[column]
            if value and value not in layout.CLASSES:
                problems.append(
                    Problem(
                        layout.TRAIN_CSV,
                        line,
                        f"study {study}: {column}={value!r} is not one of {', '.join(layout.CLASSES)}",
                    )
                )
            elif value:
                grades[study][level] = value

    studies = sorted({s for s, _ in descriptions} | set(grades))
    result.studies = len(studies)
    for study in studies:
        if not any(d == layout.AXIAL_T2 for (s, _), d in descriptions.items() if s == study):
            problems.append(
                Problem(layout.SERIES_CSV, None, f"study {study} has no {layout.AXIAL_T2} series")
            )

    points: dict[tuple[int, str], dict[str, tuple[int, int, float, float, int]]] = {}
    seen_points: dict[tuple[Any, ...], int] = {}
    headers: dict[Path, Any] = {}
    for line, row in coordinate_rows:
        try:
            study = _integer(row["study_id"], "study_id")
            series = _integer(row["series_id"], "series_id")
            instance = _integer(row["instance_number"], "instance_number")
            condition, level = row["condition"], row["level"]
            if condition not in layout.CONDITIONS:
                raise ValueError(f"unknown condition {condition!r} (known: {', '.join(layout.CONDITIONS)})")
            if level not in layout.LEVELS:
                raise ValueError(f"unknown level {level!r} (known: {', '.join(layout.LEVELS)})")
            x, y = parse_number(row["x"], "x"), parse_number(row["y"], "y")
        except ValueError as exc:
            problems.append(Problem(layout.COORDINATES_CSV, line, str(exc)))
            continue
        key = (study, series, instance, condition, level)
        if key in seen_points:
            problems.append(Problem(layout.COORDINATES_CSV, line, f"duplicate of line {seen_points[key]}"))
            continue
        seen_points[key] = line
        if condition not in (layout.LEFT_SUBARTICULAR, layout.RIGHT_SUBARTICULAR):
            continue  # canal points lie on the sagittal series; foraminal ones are another condition
        description = descriptions.get((study, series))
        if description is None:
            reason = f"series {series} of study {study} is not in {layout.SERIES_CSV}"
            problems.append(Problem(layout.COORDINATES_CSV, line, reason))
            continue
        if description != layout.AXIAL_T2:
            reason = f"{condition} point on a {description!r} series; subarticular points must lie on an Axial T2 slice"
            problems.append(Problem(layout.COORDINATES_CSV, line, reason))
            continue
        path = images_dir / str(study) / str(series) / f"{instance}.dcm"
        if not path.is_file():
            reason = f"instance not found: {path.relative_to(source)}"
            problems.append(Problem(layout.COORDINATES_CSV, line, reason))
            continue
        try:
            header = headers.get(path) or pydicom.dcmread(path, stop_before_pixels=True)
            headers[path] = header
            rows, columns = int(header.Rows), int(header.Columns)
        except Exception as exc:
            problems.append(
                Problem(layout.COORDINATES_CSV, line, f"{path.relative_to(source)}: unreadable ({exc})")
            )
            continue
        if not (0 <= x < columns and 0 <= y < rows):
            reason = f"point ({x:g}, {y:g}) is outside the {columns}x{rows} image {path.relative_to(source)}"
            problems.append(Problem(layout.COORDINATES_CSV, line, reason))
            continue
        side = "left" if condition == layout.LEFT_SUBARTICULAR else "right"
        points.setdefault((study, level), {})[side] = (series, instance, x, y, line)

    used_series: set[tuple[int, int]] = set()
    for (study, level), pair in sorted(points.items()):
        first_line = min(p[4] for p in pair.values())
        if len(pair) < 2:
            missing = "right" if "left" in pair else "left"
            reason = f"study {study} {level}: no {missing} subarticular point, so no canal box"
            problems.append(Problem(layout.COORDINATES_CSV, first_line, reason))
            continue
        (s_left, i_left, xl, yl, _), (s_right, i_right, xr, yr, _) = pair["left"], pair["right"]
        if (s_left, i_left) != (s_right, i_right):
            reason = (
                f"study {study} {level}: left and right subarticular points on different slices "
                f"(series {s_left} instance {i_left}, series {s_right} instance {i_right})"
            )
            problems.append(Problem(layout.COORDINATES_CSV, first_line, reason))
            continue
        grade = grades.get(study, {}).get(level)
        if grade is None:
            why = (
                "no row in train.csv"
                if study not in grades
                else f"{layout.label_column(layout.CANAL, level)} is empty"
            )
            reason = f"study {study} {level}: unlabelled level ({why})"
            problems.append(Problem(layout.COORDINATES_CSV, first_line, reason))
            continue
        path = images_dir / str(study) / str(s_left) / f"{i_left}.dcm"
        header = headers[path]
        spacing_row, spacing_col = (float(v) for v in header.PixelSpacing)
        cx, cy = (xl + xr) / 2, (yl + yr) / 2
        half_w, half_h = box_mm[0] / 2 / spacing_col, box_mm[1] / 2 / spacing_row
        columns, rows = int(header.Columns), int(header.Rows)
        box = (
            max(0.0, cx - half_w),
            max(0.0, cy - half_h),
            min(float(columns), cx + half_w),
            min(float(rows), cy + half_h),
        )
        result.labels.append(
            {
                "analyzer": rater,
                "sop_instance_uid": str(header.SOPInstanceUID),
                "x_min": round(box[0], 2),
                "y_min": round(box[1], 2),
                "x_max": round(box[2], 2),
                "y_max": round(box[3], 2),
                "level": "rootlet",
                "grade": grade,
                "vertebral_level": level,
            }
        )
        used_series.add((study, s_left))

    out.mkdir(parents=True, exist_ok=True)
    dicom = out / "dicom"
    shutil.rmtree(dicom, ignore_errors=True)  # links only: the source's files are never touched
    for study, series in sorted(used_series):  # the whole series: the grader's series reference reads it
        for f in sorted((images_dir / str(study) / str(series)).glob("*.dcm")):
            target = dicom / str(study) / str(series) / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if link == "symlink":
                os.symlink(f.resolve(), target)
            else:
                shutil.copyfile(f, target)
            result.linked_files += 1
    lines = [",".join(CSV_COLUMNS)] + [",".join(str(r[c]) for c in CSV_COLUMNS) for r in result.labels]
    atomic_write_text(out / "labels.csv", "\n".join(lines) + "\n")
    manifest = {"format": "rsna2024", "grading": "rsna", "source": str(source.resolve())}
    atomic_write_text(out / DATASET_MANIFEST, json.dumps(manifest, indent=2))
    atomic_write_text(out / "rsna_ingest_report.json", json.dumps(result.report(), indent=2))
    return result
