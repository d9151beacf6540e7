"""DICOM ingestion: scan a folder tree, index every image, decode pixels once into a cache.

Training reads only the cache (``ImageCache``); DICOM is decoded once per file version. A file that is not a
readable image is never fatal: it lands in ``skipped`` with the reason, as the data contract requires.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat as stat_module
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
from lumbar_lightning.io import atomic_write_text, private_tmp

#: One row per image in the index. ``patient`` is the salted pseudonym; the PatientID itself is never kept.
INDEX_COLUMNS = [
    "sop_instance_uid",
    "frame",
    "patient",
    "study_instance_uid",
    "series_instance_uid",
    "instance_number",
    "ipp_x",
    "ipp_y",
    "ipp_z",
    "normal_x",
    "normal_y",
    "normal_z",
    "slice_position",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "slice_thickness",
    "rows",
    "columns",
    "modality",
    "series_description",
    "image_type",
    "echo_time",
    "repetition_time",
    "transfer_syntax",
    "pixel_sha1",
    "path",
    "file_size",
    "file_mtime_ns",
]

#: Refuse to allocate for images larger than this many pixels (a hostile header must not exhaust memory).
MAX_PIXELS = 4096 * 4096
#: Frames of one multi-frame object, and pixels of all frames of one file together: what one file may make us
#: allocate is bounded before decoding (64 Mi pixels = 256 MiB as float32).
MAX_FRAMES = 1024
MAX_FILE_PIXELS = 64 * 1024 * 1024


@dataclass
class SkippedFile:
    """A file that ingestion did not take, and why."""

    path: str
    reason: str

    def as_dict(self, relative_to: Path | None = None) -> dict[str, str]:
        """For reports: the path relative to the data folder where given (no machine-specific prefix)."""
        path = self.path
        if relative_to is not None and Path(self.path).is_relative_to(relative_to):
            path = str(Path(self.path).relative_to(relative_to))
        return {"path": path, "reason": self.reason}


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


def _floats(value: Any, n: int) -> list[float]:
    """``n`` numbers from a multi-valued tag, NaN where absent or malformed (a wrong VR must not crash a scan)."""
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return [float("nan")] * n
    return values[:n] if len(values) >= n else [float("nan")] * n


def image_key(sop_uid: str, frame: int = 0) -> str:
    """The id of one image: its SOPInstanceUID, or ``<uid>#<frame>`` for a frame (1-based) of a multi-frame object."""
    return f"{sop_uid}#{frame}" if frame else sop_uid


def _first_item(ds: Any, keyword: str) -> Any:
    return _item_at(ds.get(keyword), 0) if ds is not None else None


def _functional(ds: pydicom.Dataset, frame_index: int | None, group: str, keyword: str) -> Any:
    """A per-frame value of an enhanced object (per-frame group, then shared group), else the top-level tag."""
    if frame_index is not None:
        for holder in (
            _item_at(ds.get("PerFrameFunctionalGroupsSequence"), frame_index),
            _first_item(ds, "SharedFunctionalGroupsSequence"),
        ):
            item = _first_item(holder, group)
            if item is not None and keyword in item:
                return item.get(keyword)
    return ds.get(keyword)


def _item_at(seq: Any, index: int) -> Any:
    try:
        return seq[index] if seq is not None and len(seq) > index else None
    except (TypeError, IndexError):
        return None


def header_record(
    ds: pydicom.Dataset, path: Path, salt: str, frame_index: int | None = None
) -> dict[str, Any]:
    """The index row of one image (a single-frame file, or frame ``frame_index`` of a multi-frame one): geometry,
    sequence and identity tags, with NaN where a tag is absent. Slices are ordered by ``slice_position``, the
    position along the slice normal, never by InstanceNumber or file name."""
    ipp = _floats(_functional(ds, frame_index, "PlanePositionSequence", "ImagePositionPatient"), 3)
    iop = _floats(_functional(ds, frame_index, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    spacing = _floats(_functional(ds, frame_index, "PixelMeasuresSequence", "PixelSpacing"), 2)
    thickness = _float(_functional(ds, frame_index, "PixelMeasuresSequence", "SliceThickness"))
    normal = np.cross(iop[:3], iop[3:]) if np.all(np.isfinite(iop)) else np.full(3, np.nan)
    norm = float(np.linalg.norm(normal))
    normal = normal / norm if norm > 0 else np.full(3, np.nan)
    echo = ds.get("EchoTime")
    if echo is None and frame_index is not None:
        echo = _functional(ds, frame_index, "MREchoSequence", "EffectiveEchoTime")
    stat = path.stat()
    patient_id = str(ds.get("PatientID", "") or "")
    frame = frame_index + 1 if frame_index is not None else 0
    image_type = ds.get("ImageType") or []
    return {
        "sop_instance_uid": image_key(str(ds.SOPInstanceUID), frame),
        "frame": frame,
        "patient_id": patient_id,
        "patient": pseudonymise(patient_id, salt),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "instance_number": int(_float(ds.get("InstanceNumber"), -1)),
        "ipp_x": ipp[0],
        "ipp_y": ipp[1],
        "ipp_z": ipp[2],
        "normal_x": float(normal[0]),
        "normal_y": float(normal[1]),
        "normal_z": float(normal[2]),
        "slice_position": float(np.dot(ipp, normal)),
        "pixel_spacing_row": spacing[0],
        "pixel_spacing_col": spacing[1],
        "slice_thickness": thickness,
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "modality": str(ds.get("Modality", "")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "image_type": "\\".join(str(v) for v in image_type)
        if not isinstance(image_type, str)
        else image_type,
        "echo_time": _float(echo),
        "repetition_time": _float(ds.get("RepetitionTime")),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else "",
        "path": str(path),
        "file_size": stat.st_size,
        "file_mtime_ns": stat.st_mtime_ns,
    }


def decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel values in the modality's units (rescale applied), MONOCHROME1 inverted, as float32 2-D (one frame)
    or 3-D (frames first)."""
    arr = ds.pixel_array
    frames = int(_float(ds.get("NumberOfFrames"), 1))
    if arr.ndim != (3 if frames > 1 else 2):
        raise ValueError(
            f"expected {frames} frame(s) of one sample per pixel, got an array of shape {arr.shape}"
        )
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


def _open_dataset(path: Path) -> pydicom.Dataset:
    """Parse a file's DICOM header and data elements (pixel data stays undecoded); ``ValueError`` if unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as fh:
                return pydicom.dcmread(fh, force=False)
    except InvalidDicomError as exc:
        raise ValueError(f"not a DICOM file ({exc})") from exc
    except PermissionError as exc:
        raise ValueError(f"unreadable: permission denied ({exc.strerror})") from exc
    except IsADirectoryError as exc:
        raise ValueError("not a regular file") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise ValueError(f"corrupt DICOM ({type(exc).__name__}: {exc})") from exc


def _check_image_header(ds: pydicom.Dataset) -> int:
    """Validate what decoding would allocate from, before anything is allocated; returns the frame count."""
    if "PixelData" not in ds:
        raise ValueError("no pixel data")
    if "SOPInstanceUID" not in ds or not str(ds.SOPInstanceUID).strip():
        raise ValueError("no SOPInstanceUID")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(_float(ds.get("NumberOfFrames"), 1))
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed image size tags ({exc})") from exc
    if rows <= 0 or cols <= 0:
        raise ValueError(f"invalid image size Rows={rows} Columns={cols}")
    if rows * cols > MAX_PIXELS:
        raise ValueError(f"image size {rows}x{cols} exceeds the limit of {MAX_PIXELS} pixels")
    if not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"NumberOfFrames={frames} is outside 1..{MAX_FRAMES}")
    if rows * cols * frames > MAX_FILE_PIXELS:
        raise ValueError(
            f"{frames} frame(s) of {rows}x{cols} exceed the limit of {MAX_FILE_PIXELS} pixels a file"
        )
    if samples != 1:
        raise ValueError(f"SamplesPerPixel={samples}: MR images have one sample per pixel")
    length = len(ds.PixelData) if ds.PixelData is not None else 0
    if length == 0:
        raise ValueError("pixel data is empty (zero length)")
    try:
        compressed = (
            ds.file_meta.TransferSyntaxUID.is_compressed if "TransferSyntaxUID" in ds.file_meta else True
        )
    except ValueError as exc:
        raise ValueError(f"invalid TransferSyntaxUID {ds.file_meta.TransferSyntaxUID!r} ({exc})") from exc
    if not compressed:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        expected = rows * cols * frames * max(1, bits // 8)
        if length < expected:
            raise ValueError(
                f"pixel data is shorter than its header declares ({length} bytes for {frames} frame(s) of "
                f"{rows}x{cols} at {bits} bits = {expected} bytes): truncated file?"
            )
    return frames


def read_images(path: Path, salt: str = "lumbar-lightning") -> list[tuple[dict[str, Any], np.ndarray]]:
    """Read, validate and decode one DICOM file: one (record, pixels) per image, several for a multi-frame
    object (each frame with its own position and spacing). ``ValueError`` with a readable reason if unusable."""
    ds = _open_dataset(path)
    # pydicom parses elements lazily, so a corrupt element (an unknown VR, a bad value) raises on first access,
    # of any type: every access below turns that into a reason.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            frames = _check_image_header(ds)
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"corrupt DICOM header ({type(exc).__name__}: {exc})") from exc
        try:
            pixels = decode_pixels(ds)
        except Exception as exc:
            raise ValueError(f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
        try:
            if frames == 1:
                return [(header_record(ds, path, salt), pixels)]
            if ds.get("PerFrameFunctionalGroupsSequence") is None:
                raise ValueError(
                    f"multi-frame image ({frames} frames) without per-frame functional groups: "
                    "no per-frame position, so its frames cannot be placed"
                )
            return [(header_record(ds, path, salt, i), pixels[i]) for i in range(frames)]
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"corrupt DICOM header ({type(exc).__name__}: {exc})") from exc


def read_image(path: Path, salt: str = "lumbar-lightning") -> tuple[dict[str, Any], np.ndarray]:
    """The one image of a single-frame file (see ``read_images`` for multi-frame objects)."""
    images = read_images(path, salt)
    if len(images) != 1:
        raise ValueError(f"{path} holds {len(images)} frames; use read_images")
    return images[0]


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
        tmp = private_tmp(target)
        try:
            np.save(tmp, image.astype(np.float16, copy=False))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def has(self, sop_instance_uid: str) -> bool:
        return self.image_path(sop_instance_uid).exists()

    def get(self, sop_instance_uid: str) -> np.ndarray:
        """The cached image as float32 in [0, 1]."""
        return np.load(self.image_path(sop_instance_uid)).astype(np.float32)


def _stat_key(path: Path) -> tuple[int, int] | str:
    """(size, mtime) of a regular file, else why it cannot be read."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot be read ({exc.strerror or 'broken link or vanished file'})"
    if not stat_module.S_ISREG(st.st_mode):
        return "not a regular file (device, pipe or socket)"
    return st.st_size, st.st_mtime_ns


def _manifest_key(path: Path) -> str:
    # Hashed, so the cache holds no file names (exports often name folders after the patient).
    return hashlib.sha1(str(path).encode()).hexdigest()


#: What the cache manifest keeps of a record: no identifier, no path.
_PRIVATE_FIELDS = ("patient_id", "path")


@dataclass
class DicomIndex:
    """The result of a scan: one row per usable image, and the files that were skipped with their reasons."""

    images: pd.DataFrame
    skipped: list[SkippedFile]
    decoded: int = 0
    from_cache: int = 0


def _read_for_cache(
    path: Path, salt: str
) -> tuple[list[tuple[dict[str, Any], np.ndarray]] | None, str | None]:
    """``read_images`` with each image's pixel digest added and its pixels normalised for the cache, or the reason
    the file is unusable: the per-file work of ingestion, which ``read_many`` spreads over processes."""
    try:
        images = read_images(path, salt)
    except ValueError as exc:
        return None, str(exc)
    out = []
    for record, pixels in images:
        record["pixel_sha1"] = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        out.append((record, normalise(pixels)))
    return out, None


def read_many(
    paths: list[Path], salt: str, workers: int | None = None, window: int = 256
) -> Iterator[tuple[list[tuple[dict[str, Any], np.ndarray]] | None, str | None]]:
    """``_read_for_cache`` of each path, in order. With many files, ``workers`` processes (default: the CPU
    count, at most 8) decode them, at most ``window`` files ahead of the consumer so memory stays bounded;
    decoding is ~95% of a first ingestion. The results are the same either way."""
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    if workers <= 1 or len(paths) < 64:
        yield from (_read_for_cache(p, salt) for p in paths)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # fork where there is one: a spawned child re-imports the caller's main module (torch and Lightning for the
    # entry points, ~6 s each), which cost more than it saved. The children only run pydicom and numpy, never
    # the caller's thread pools, as the phantom generator's workers do.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        pending: deque = deque()
        todo = iter(paths)
        for path in todo:
            pending.append(pool.submit(_read_for_cache, path, salt))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_read_for_cache, nxt, salt))
            yield result


def scan_dicom(
    dicom_dir: Path, cache: ImageCache, salt: str = "lumbar-lightning", workers: int | None = None
) -> DicomIndex:
    """Index and cache every image below ``dicom_dir``; reuse cache entries whose source file is unchanged.
    Files to decode are read by ``workers`` processes (``read_many``).

    Identical copies of a SOPInstanceUID: the first (in path order) wins. Copies with different pixels: every
    copy is skipped, since which one a label means cannot be known.
    """
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise DataContractError(
            f"{dicom_dir} is not a folder: a data set needs its images under <dataset>/dicom"
        )
    old = cache.load_manifest()
    salt_id = hashlib.sha256(f"salt\x00{salt}".encode()).hexdigest()[:16]
    new: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    skipped: list[SkippedFile] = []
    seen: dict[str, tuple[str, str]] = {}  # image key -> (first path, pixel digest)
    conflicting: dict[str, list[str]] = {}
    decoded = from_cache = 0
    plan: list[tuple[Path, str, tuple[int, int] | str, dict[str, Any] | None]] = []
    for path in iter_files(dicom_dir):
        key = _manifest_key(path.resolve() if not path.is_symlink() else path)
        stat = _stat_key(path)
        entry = old.get(key)
        cached_ok = (
            not isinstance(stat, str)
            and entry is not None
            and (entry.get("file_size"), entry.get("file_mtime_ns")) == stat
            and entry.get("salt") == salt_id
            and ("reason" in entry or all(cache.has(r["sop_instance_uid"]) for r in entry["records"]))
        )
        plan.append((path, key, stat, entry if cached_ok else None))
    to_decode = [path for path, _, stat, entry in plan if entry is None and not isinstance(stat, str)]
    reads = read_many(to_decode, salt, workers)
    for path, key, stat, entry in plan:
        if isinstance(stat, str):
            skipped.append(SkippedFile(str(path), stat))
            continue
        if entry is not None:
            from_cache += 1
            new[key] = entry
            records = [dict(r, path=str(path)) for r in entry.get("records", [])]
        else:
            decoded += 1
            images, reason = next(reads)
            if images is None:
                new[key] = {
                    "file_size": stat[0],
                    "file_mtime_ns": stat[1],
                    "salt": salt_id,
                    "reason": reason,
                }
                records = []
            else:
                records = []
                for record, normalised in images:
                    if record["sop_instance_uid"] not in seen:
                        cache.put(record["sop_instance_uid"], normalised)
                    records.append(record)
                stored = [{k: v for k, v in r.items() if k not in _PRIVATE_FIELDS} for r in records]
                new[key] = {
                    "file_size": stat[0],
                    "file_mtime_ns": stat[1],
                    "salt": salt_id,
                    "records": stored,
                }
        if "reason" in new[key]:
            skipped.append(SkippedFile(str(path), new[key]["reason"]))
            continue
        for record in records:
            uid = record["sop_instance_uid"]
            if uid in seen:
                first, digest = seen[uid]
                if digest == record["pixel_sha1"]:
                    reason = f"duplicate SOPInstanceUID {uid} (identical copy of {first})"
                else:
                    conflicting.setdefault(uid, [first]).append(str(path))
                    reason = f"duplicate SOPInstanceUID {uid} with different pixels from {first}: all copies skipped"
                skipped.append(SkippedFile(str(path), reason))
                continue
            seen[uid] = (str(path), record["pixel_sha1"])
            rows.append(record)
    for uid, paths in conflicting.items():
        skipped.append(
            SkippedFile(
                paths[0],
                f"SOPInstanceUID {uid} has {len(paths)} copies with different pixels: all copies skipped",
            )
        )
    rows = [r for r in rows if r["sop_instance_uid"] not in conflicting]
    cache.save_manifest(new)
    images = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    return DicomIndex(images=images, skipped=skipped, decoded=decoded, from_cache=from_cache)
