"""``PhantomCohort``: write a seeded synthetic cohort in the data contract (DICOM, labels.csv, truth.csv).

Every random stream is keyed by (seed, purpose, patient, slice), so the same seed gives the same bytes whatever
the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lumbar_lightning.data.dicom.writer import SeriesInfo, deterministic_uid, write_mr_slice
from lumbar_lightning.data.labels import CSV_COLUMNS
from lumbar_lightning.data.phantom.latent import (
    DISC_LEVELS,
    GRADES,
    LatentConfig,
    LatentPatient,
    RaterModel,
    grade_of,
    grade_thresholds,
    read_patient,
    sample_patient,
    severity_units,
)
from lumbar_lightning.data.phantom.render import PatientAnatomy, SliceRenderer, SliceSpec
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.numerics import numpy_numerics

LABEL_FIELDS = CSV_COLUMNS
TRUTH_FIELDS = [
    *LABEL_FIELDS[1:],
    "severity",
    "severity_units",
    "dural_sac_area_mm2",
    "epidural_fat_mm",
    "slice_z_mm",
    "conus_z_mm",
    "cord_radius_mm",
    "patient_index",
]


@dataclass(frozen=True)
class PhantomConfig:
    """Imaging and cohort settings; the hidden truth's settings are in ``latent``."""

    n_patients: int = 100
    seed: int = 0
    image_size: int = 320
    pixel_spacing_mm: float = 0.69
    slice_thickness_mm: float = 4.0
    snr: float = 25.0
    #: Write a fake PatientName, birth date and accession number (to test that none of them leaks).
    identifiers: bool = False
    latent: LatentConfig = field(default_factory=LatentConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PhantomConfig:
        """Build from plain values (a Hydra config), with the latent and rater settings nested."""
        values = dict(values)
        latent = dict(values.pop("latent", None) or {})
        raters = latent.pop("raters", None)
        if raters is not None:
            latent["raters"] = tuple(RaterModel(**dict(r)) for r in raters)
        if "prevalence" in latent:
            latent["prevalence"] = tuple(float(p) for p in latent["prevalence"])
        return cls(**values, latent=LatentConfig(**latent))


def patient_id(cfg: PhantomConfig, index: int) -> str:
    """The phantom's PatientID: already a pseudonym, carrying the seed so cohorts never collide."""
    return f"PHANTOM-{cfg.seed}-{index:04d}"


def _patient_rows(cfg: PhantomConfig, index: int, out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Render, write and label one patient (runs in a worker process)."""
    lat = cfg.latent
    thresholds = grade_thresholds(lat)
    patient: LatentPatient = sample_patient(lat, np.random.default_rng([cfg.seed, 0, index]), index)
    anatomy = PatientAnatomy.sample(np.random.default_rng([cfg.seed, 1, index]))
    renderer = SliceRenderer(anatomy, cfg.image_size, cfg.pixel_spacing_mm, cfg.snr)
    pid = patient_id(cfg, index)
    series = SeriesInfo(
        patient_id=pid,
        study_uid=deterministic_uid(cfg.seed, "study", index),
        series_uid=deterministic_uid(cfg.seed, "series", index),
        frame_of_reference_uid=deterministic_uid(cfg.seed, "for", index),
        pixel_spacing=cfg.pixel_spacing_mm,
        slice_thickness=cfg.slice_thickness_mm,
        spacing_between_slices=lat.slice_spacing_mm,
    )
    if cfg.identifiers:
        series = replace(
            series,
            patient_name=f"Doe^Jane{index:03d}",
            patient_birth_date=f"19{40 + index % 50:02d}0{1 + index % 9}1{index % 10}",
            accession_number=f"ACC{cfg.seed:03d}{index:05d}",
            study_date="20240115",
        )
    cord_r = patient.cord_radius(patient.slice_z)
    true_cord = patient.is_cord()
    true_grade = grade_of(patient.severity, thresholds)
    units = severity_units(patient.severity, thresholds)
    fov_origin = -(cfg.image_size / 2.0) * cfg.pixel_spacing_mm
    truth, boxes, uids = [], [], []
    for j in range(patient.n_slices):
        spec = SliceSpec(
            level_index=int(patient.level_index[j]),
            disc_offset_mm=float(patient.disc_offset[j]),
            segment_mm=patient.segment_mm,
            severity_units=float(units[j]),
            cord_radius_mm=float(cord_r[j]),
        )
        rendered = renderer.render(spec, np.random.default_rng([cfg.seed, 2, index, j]))
        pixels = np.clip(np.rint(rendered.image * anatomy.gain), 0, 65535).astype(np.uint16)
        uid = deterministic_uid(cfg.seed, "sop", index, j)
        z = float(patient.slice_z[j])
        write_mr_slice(
            out_dir / "dicom" / pid / f"IM{j + 1:04d}.dcm",
            pixels,
            series,
            uid,
            instance_number=j + 1,
            position=(fov_origin, fov_origin, z),
        )
        level = "cord" if true_cord[j] else "rootlet"
        truth.append(
            {
                "sop_instance_uid": uid,
                **dict(
                    zip(
                        ("x_min", "y_min", "x_max", "y_max"),
                        (round(v, 2) for v in rendered.canal_box),
                        strict=True,
                    )
                ),
                "level": level,
                "grade": "" if true_cord[j] else GRADES[true_grade[j]],
                "vertebral_level": DISC_LEVELS[patient.level_index[j]],
                "severity": round(float(patient.severity[j]), 5),
                "severity_units": round(float(units[j]), 4),
                "dural_sac_area_mm2": round(rendered.sac_area_mm2, 2),
                "epidural_fat_mm": round(rendered.epidural_fat_mm, 3),
                "slice_z_mm": round(z, 3),
                "conus_z_mm": round(patient.conus_z, 3),
                "cord_radius_mm": round(float(cord_r[j]), 3),
                "patient_index": index,
            }
        )
        boxes.append(rendered.canal_box)
        uids.append(uid)
    labels = []
    for r, rater in enumerate(lat.raters):
        reading = read_patient(patient, rater, thresholds, np.random.default_rng([cfg.seed, 3, index, r]))
        for j in range(patient.n_slices):
            if not reading.labelled[j]:
                continue
            box = _jitter_box(boxes[j], reading.box_jitter[j], cfg.image_size)
            cord = bool(reading.is_cord[j])
            labels.append(
                {
                    "analyzer": rater.name,
                    "sop_instance_uid": uids[j],
                    **dict(zip(("x_min", "y_min", "x_max", "y_max"), box, strict=True)),
                    "level": "cord" if cord else "rootlet",
                    "grade": "" if cord else GRADES[reading.grade[j]],
                    "vertebral_level": DISC_LEVELS[patient.level_index[j]],
                }
            )
    return {"truth": truth, "labels": labels}


def _jitter_box(box: tuple[float, ...], jitter: np.ndarray, size: int) -> list[float]:
    """A rater's box: the true one moved by a few pixels, kept inside the image and non-empty."""
    x0, y0, x1, y1 = (float(np.clip(v + d, 0, size)) for v, d in zip(box, jitter, strict=True))
    x0, x1 = min(x0, x1 - 2), max(x1, x0 + 2)
    y0, y1 = min(y0, y1 - 2), max(y1, y0 + 2)
    return [round(float(np.clip(v, 0, size)), 2) for v in (x0, y0, x1, y1)]


def write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` atomically (a half-written labels file would look like a smaller cohort)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_patients(
    render: Callable[[Any, int, Path], dict[str, list[dict[str, Any]]]],
    cfg: Any,
    out_dir: Path,
    truth_fields: list[str],
    workers: int | None = None,
) -> int:
    """What every phantom family does around its own renderer: empty ``out_dir/dicom``, run
    ``render(cfg, index, out_dir)`` for each of ``cfg.n_patients`` patients (in ``workers`` processes; the bytes do
    not depend on how many), and write ``truth.csv`` and ``labels.csv`` from the rows it returns. Returns the
    number of images."""
    n_patients = cfg.n_patients
    if (out_dir / "dicom").exists():
        shutil.rmtree(out_dir / "dicom")
    (out_dir / "dicom").mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, n_patients))
    args = ([cfg] * n_patients, range(n_patients), [out_dir] * n_patients)
    if workers == 1:
        results = list(map(render, *args))
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(render, *args))
    truth = [row for res in results for row in res["truth"]]
    write_csv(out_dir / "truth.csv", truth_fields, truth)
    write_csv(out_dir / "labels.csv", LABEL_FIELDS, [row for res in results for row in res["labels"]])
    return len(truth)


@dataclass
class PhantomCohort:
    """A generated cohort on disk, with what was measured while making it."""

    root: Path
    config: PhantomConfig
    n_images: int
    seconds: float

    @classmethod
    def generate(cls, cfg: PhantomConfig, out_dir: Path | str, workers: int | None = None) -> PhantomCohort:
        """Write ``cfg.n_patients`` patients into ``out_dir`` (replacing an earlier cohort there)."""
        out_dir = Path(out_dir)
        start = time.perf_counter()
        grade_thresholds(cfg.latent)  # calibrate once here, before the workers copy the cache
        n_images = write_patients(_patient_rows, cfg, out_dir, TRUTH_FIELDS, workers)
        seconds = time.perf_counter() - start
        cohort = cls(out_dir, cfg, n_images, seconds)
        atomic_write_text(out_dir / "phantom.json", json.dumps(cohort.manifest(), indent=2))
        return cohort

    def manifest(self) -> dict[str, Any]:
        return {
            "generator": "lumbar_lightning.data.phantom",
            "config": self.config.to_dict(),
            "images": self.n_images,
            "seconds": round(self.seconds, 2),
            "grade_thresholds": [float(t) for t in grade_thresholds(self.config.latent)],
            "numerics": numpy_numerics(),  # the pixels depend on numpy's kernels: another set, another cohort
        }
