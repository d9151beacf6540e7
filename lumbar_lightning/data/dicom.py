"""DICOM ingestion: scan a folder tree, index every image, decode pixels once into a cache.

Training reads only the cache (``ImageCache``); DICOM is decoded once per file version. A file that is not a
readable image is never fatal: it lands in ``skipped`` with the reason, as the data contract requires.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from lumbar_lightning.data.errors import DataContractError

#: One row per image in the index; ``patient`` is the pseudonym that may leave the machine, ``patient_id`` not.
INDEX_COLUMNS = [
    "sop_instance_uid",
    "patient_id",
    "patient",
    "study_instance_uid",
    "series_instance_uid",
    "instance_number",
    "ipp_x",
    "ipp_y",
    "ipp_z",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "slice_thickness",
    "rows",
    "columns",
    "modality",
    "series_description",
    "transfer_syntax",
    "path",
    "file_size",
    "file_mtime_ns",
]

#: Refuse to allocate for images larger than this many pixels (a hostile header must not exhaust memory).
MAX_PIXELS = 4096 * 4096


@dataclass
class SkippedFile:
    """A file that ingestion did not take, and why."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def pseudonymise(patient_id: str, salt: str = "lumbar-lightning") -> str:
    """Stable pseudonym for a PatientID: a salted hash, so results can be mapped back only by the salt holder."""
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()
    return f"P-{digest[:12]}"


def iter_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` sorted by path, never following directory links (so no link loops)."""
    found = [
        Path(dirpath) / name
        for dirpath, _, filenames in os.walk(root, followlinks=False)
        for name in filenames
        if not name.startswith(".")
    ]
    yield from sorted(found, key=str)


def _float(value: Any, default: float = float("nan")) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def header_record(ds: pydicom.Dataset, path: Path, salt: str) -> dict[str, Any]:
    """The index row of one dataset: geometry and identity tags, with NaN where a tag is absent."""
    ipp = ds.get("ImagePositionPatient") or [np.nan, np.nan, np.nan]
    spacing = ds.get("PixelSpacing") or [np.nan, np.nan]
    stat = path.stat()
    patient_id = str(ds.get("PatientID", "") or "")
    return {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "patient_id": patient_id,
        "patient": pseudonymise(patient_id, salt),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "instance_number": int(_float(ds.get("InstanceNumber"), -1)),
        "ipp_x": _float(ipp[0]),
        "ipp_y": _float(ipp[1]),
        "ipp_z": _float(ipp[2]),
        "pixel_spacing_row": _float(spacing[0]),
        "pixel_spacing_col": _float(spacing[1]),
        "slice_thickness": _float(ds.get("SliceThickness")),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "modality": str(ds.get("Modality", "")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else "",
        "path": str(path),
        "file_size": stat.st_size,
        "file_mtime_ns": stat.st_mtime_ns,
    }


def decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel values in the modality's units (rescale applied), MONOCHROME1 inverted, as float32 2-D."""
    arr = ds.pixel_array
    if arr.ndim != 2:
        raise ValueError(f"expected a single-frame 2-D image, got an array of shape {arr.shape}")
    arr = pydicom.pixels.apply_rescale(arr, ds).astype(np.float32, copy=False)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    return arr


def normalise(arr: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Robust per-image scaling to [0, 1]: MR intensities have no absolute unit, so each image is its own reference."""
    lo, hi = np.percentile(arr, [low_pct, high_pct])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.float16)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float16)


def read_image(path: Path, salt: str = "lumbar-lightning") -> tuple[dict[str, Any], np.ndarray]:
    """Read, validate and decode one DICOM file; raise ``ValueError`` with a readable reason if it is unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=False)
    except InvalidDicomError as exc:
        raise ValueError(f"not a DICOM file ({exc})") from exc
    except PermissionError as exc:
        raise ValueError(f"unreadable: permission denied ({exc.strerror})") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise ValueError(f"corrupt DICOM ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise ValueError("no pixel data")
    if "SOPInstanceUID" not in ds or not str(ds.SOPInstanceUID).strip():
        raise ValueError("no SOPInstanceUID")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"invalid image size Rows={rows} Columns={cols}")
    if rows * cols > MAX_PIXELS:
        raise ValueError(f"image size {rows}x{cols} exceeds the limit of {MAX_PIXELS} pixels")
    frames = int(_float(ds.get("NumberOfFrames"), 1))
    if frames > 1:
        raise ValueError(f"multi-frame image ({frames} frames) is not supported")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = decode_pixels(ds)
    except Exception as exc:
        raise ValueError(f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    return header_record(ds, path, salt), pixels


@dataclass
class ImageCache:
    """Normalised float16 images keyed by SOPInstanceUID, plus a manifest that ties each to its source file.

    An entry is valid while its source file keeps the same path, size and modification time; anything else
    makes ingestion decode the file again.
    """

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "images").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(sop_instance_uid: str) -> str:
        return hashlib.sha1(sop_instance_uid.encode()).hexdigest()

    def image_path(self, sop_instance_uid: str) -> Path:
        return self.root / "images" / f"{self.key(sop_instance_uid)}.npy"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def load_manifest(self) -> dict[str, dict[str, Any]]:
        """Path -> cached header record (or skip reason) of the last ingestion."""
        if not self.manifest_path.exists():
            return {}
        try:
            return json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, OSError):
            return {}

    def save_manifest(self, manifest: dict[str, dict[str, Any]]) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest))

    def put(self, sop_instance_uid: str, image: np.ndarray) -> None:
        target = self.image_path(sop_instance_uid)
        tmp = target.with_suffix(".tmp.npy")
        np.save(tmp, image.astype(np.float16, copy=False))
        os.replace(tmp, target)

    def has(self, sop_instance_uid: str) -> bool:
        return self.image_path(sop_instance_uid).exists()

    def get(self, sop_instance_uid: str) -> np.ndarray:
        """The cached image as float32 in [0, 1]."""
        return np.load(self.image_path(sop_instance_uid)).astype(np.float32)


def atomic_write_text(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class DicomIndex:
    """The result of a scan: one row per usable image, and the files that were skipped with their reasons."""

    images: pd.DataFrame
    skipped: list[SkippedFile]
    decoded: int = 0
    from_cache: int = 0


def scan_dicom(dicom_dir: Path, cache: ImageCache, salt: str = "lumbar-lightning") -> DicomIndex:
    """Index and cache every image below ``dicom_dir``; reuse cache entries whose source file is unchanged.

    The first copy (in path order) of a SOPInstanceUID wins; later copies are skipped as duplicates.
    """
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise DataContractError(
            f"{dicom_dir} is not a folder: a data set needs its images under <dataset>/dicom"
        )
    old = cache.load_manifest()
    new: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    skipped: list[SkippedFile] = []
    seen: dict[str, str] = {}
    decoded = from_cache = 0
    for path in iter_files(dicom_dir):
        key = str(path.resolve()) if not path.is_symlink() else str(path)
        stat = _stat_key(path)
        if stat is None:
            skipped.append(SkippedFile(str(path), "cannot be read (broken link or vanished file)"))
            continue
        entry = old.get(key)
        cached_ok = (
            entry is not None
            and (entry.get("file_size"), entry.get("file_mtime_ns")) == stat
            and ("reason" in entry or cache.has(entry["record"]["sop_instance_uid"]))
        )
        if cached_ok:
            from_cache += 1
            new[key] = entry
        else:
            decoded += 1
            try:
                record, pixels = read_image(path, salt)
            except ValueError as exc:
                new[key] = {"file_size": stat[0], "file_mtime_ns": stat[1], "reason": str(exc)}
            else:
                uid = record["sop_instance_uid"]
                if uid not in seen:
                    cache.put(uid, normalise(pixels))
                new[key] = {"file_size": stat[0], "file_mtime_ns": stat[1], "record": record}
        entry = new[key]
        if "reason" in entry:
            skipped.append(SkippedFile(str(path), entry["reason"]))
            continue
        record = dict(entry["record"], path=str(path))
        record["patient"] = pseudonymise(
            record["patient_id"], salt
        )  # the salt may differ from the cached run's
        uid = record["sop_instance_uid"]
        if uid in seen:
            skipped.append(
                SkippedFile(str(path), f"duplicate SOPInstanceUID {uid} (first copy: {seen[uid]})")
            )
            continue
        seen[uid] = str(path)
        rows.append(record)
    cache.save_manifest(new)
    images = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    return DicomIndex(images=images, skipped=skipped, decoded=decoded, from_cache=from_cache)
