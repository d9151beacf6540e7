"""Image geometry shared by training and inference: detector resizing and canal patch cropping.

Training and the ``Pipeline`` call the same functions, so a patch at test time is cut exactly as in training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lumbar_lightning.data.errors import DataContractError

if TYPE_CHECKING:
    import pandas as pd


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square-resize a full image to the detector's input size (area interpolation when shrinking)."""
    interp = cv2.INTER_AREA if max(image.shape) > size else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32, copy=False), (size, size), interpolation=interp)


def scale_boxes(boxes: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Boxes (x_min, y_min, x_max, y_max) from one image size to another."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return np.asarray(boxes, dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)


@dataclass(frozen=True)
class PatchGeometry:
    """How a canal patch is cut: the box grown by ``margin`` of its size per side, squared, resized to ``size``.

    ``context`` > 1 cuts a larger patch for training so that augmentation (rotation, translation) never pulls
    in empty borders; ``center_crop`` then brings it back to ``size``.
    """

    size: int = 32
    margin: float = 0.15
    context: float = 1.0
    #: When set, the patch is a square of this many millimetres centred on the box, whatever the box's size, so the
    #: classifier sees absolute canal size (the dural sac area matters for the grade); needs the pixel spacing.
    field_mm: float | None = None

    def crop(
        self,
        image: np.ndarray,
        box: np.ndarray,
        context: float | None = None,
        pixel_mm: float | None = None,
        scale_box: np.ndarray | None = None,
    ) -> np.ndarray:
        """The patch centred on ``box``; its scale comes from ``scale_box`` when given (default ``box``): a series
        reference is cut at the scale of the slice it accompanies, so the two canals compare in size."""
        context = self.context if context is None else context
        x0, y0, x1, y1 = (float(v) for v in box)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if self.field_mm:
            if not pixel_mm or not np.isfinite(pixel_mm):
                raise ValueError("PatchGeometry.field_mm needs the image's pixel spacing")
            half = self.field_mm / pixel_mm / 2 * context
        else:
            sx0, sy0, sx1, sy1 = (float(v) for v in (box if scale_box is None else scale_box))
            half = max(sx1 - sx0, sy1 - sy0) * (0.5 + self.margin) * context
        half = max(half, 2.0)
        out = round(self.size * context)
        # Affine crop: maps [cx-half, cx+half] to [0, out]; pixels outside the image read as 0.
        s = out / (2 * half)
        matrix = np.array([[s, 0, out / 2 - s * cx], [0, s, out / 2 - s * cy]], dtype=np.float32)
        return cv2.warpAffine(
            _read_window(image, cx, cy, half),
            matrix,
            (out, out),
            flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )

    def center_crop(self, patch: np.ndarray) -> np.ndarray:
        return centre_crop(patch, self.size)


def _read_window(image: np.ndarray, cx: float, cy: float, half: float) -> np.ndarray:
    """``image`` as float32 for the warp. Any other dtype (``LumbarDataset`` holds slices as float16) is converted
    only where the warp reads, the square of ``half`` about (cx, cy) and a rim for the bilinear neighbours, and
    is zero elsewhere: the same patch bit for bit, at a twentieth of converting a whole 320 px slice (170 us)."""
    if image.dtype == np.float32:
        return image
    out = np.zeros(image.shape, dtype=np.float32)
    # The warp reads pixels floor(x) and floor(x) + 1, x within 1/32 px of the square (cv2's fixed point): the
    # square's own floor/ceil bounds suffice (tests/test_patch_crop.py), the rim is spare.
    rim = 2
    r0, c0 = (max(int(np.floor(v - half)) - rim, 0) for v in (cy, cx))
    r1, c1 = (max(int(np.ceil(v + half)) + rim + 1, 0) for v in (cy, cx))
    out[r0:r1, c0:c1] = image[r0:r1, c0:c1]
    return out


def require_pixel_spacing(geometries: Iterable[PatchGeometry | None], images: pd.DataFrame) -> None:
    """Patches cut in millimetres (``field_mm``) need each image's PixelSpacing. Training and serving both call
    this before any work starts; it names the files (``images``: index rows, ``pixel_spacing_col`` and ``path``)
    that lack a usable one, rather than failing at the first patch cut."""
    fields = sorted({g.field_mm for g in geometries if g is not None and g.field_mm})
    if not fields:
        return
    spacing = images["pixel_spacing_col"].to_numpy(dtype=float)
    paths = images["path"].to_numpy()[~(np.isfinite(spacing) & (spacing > 0))].tolist()
    if paths:
        raise DataContractError(
            f"{paths[0]}: no usable PixelSpacing, and patch.field_mm={', '.join(f'{f:g}' for f in fields)} cuts "
            f"patches in millimetres ({len(paths)} image(s) in all, e.g. {paths[:3]}); give the images their "
            "PixelSpacing or set the stage's patch.field_mm=null"
        )


def centre_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    """The central ``size`` x ``size`` of a square image (unchanged when it is no larger)."""
    off = 0 if size is None else (image.shape[0] - size) // 2
    return image[off : off + size, off : off + size] if off > 0 else image
