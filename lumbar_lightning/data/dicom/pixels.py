"""DICOM pixels: open a file, check its header against the limits, decode and normalise its frames."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lumbar_lightning.data.dicom.headers import _check_image_header, _float, header_record


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
