"""DICOM headers: what an image's header must hold to be indexed, and the index row built from it.

Patient identifiers never leave this module: the PatientID becomes a salted pseudonym here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

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


def pseudonymise(patient_id: str, salt: str = "lumbar-lightning") -> str:
    """Stable pseudonym for a PatientID: a salted hash, so results can be mapped back only by the salt holder."""
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()
    return f"P-{digest[:12]}"


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
