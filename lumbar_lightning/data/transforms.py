"""Image geometry shared by training and inference: detector resizing, canal patch cropping, augmentation.

Training and the ``Pipeline`` call the same functions, so a patch at test time is cut exactly as in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
            image.astype(np.float32, copy=False),
            matrix,
            (out, out),
            flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )

    def center_crop(self, patch: np.ndarray) -> np.ndarray:
        off = (patch.shape[0] - self.size) // 2
        return patch[off : off + self.size, off : off + self.size] if off > 0 else patch


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's augmentation: rotation, scaling, translation, horizontal flip, zero-mean Gaussian noise."""

    enabled: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.06
    hflip: float = 0.5
    noise_std: float = 0.03
    p_affine: float = 0.8
    p_noise: float = 0.5


class PaperAugment:
    """The paper's augmentation, drawn per item from a seed: one affine warp (rotation, scaling, translation, with
    the horizontal flip and, for patches, the centre crop folded into the same matrix) and zero-mean Gaussian noise.

    The distributions are those albumentations' ``Affine``/``HorizontalFlip``/``GaussNoise`` draw, but written on
    cv2 directly: albumentations' per-call bookkeeping (composition, parameter and box checks, reseeding) was 71%
    of the training loader's time (`make bench`), several times the warp itself. A call with ``seed=None`` draws
    from the instance's own generator (seeded by ``seed`` at construction).
    """

    def __init__(self, cfg: AugmentConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)

    def draw(self, rng: np.random.Generator) -> dict[str, float | bool]:
        """One item's parameters (every value is drawn, used or not, so the stream never depends on them)."""
        c = self.cfg
        u = rng.random(3)
        return {
            "affine": bool(u[0] < c.p_affine),
            "angle": float(rng.uniform(-c.rotate_deg, c.rotate_deg)),
            "scale": float(rng.uniform(1 - c.scale, 1 + c.scale)),
            "tx": float(rng.uniform(-c.translate, c.translate)),
            "ty": float(rng.uniform(-c.translate, c.translate)),
            "flip": bool(u[1] < c.hflip),
            "noise": bool(u[2] < c.p_noise),
            "noise_std": float(rng.uniform(0.0, c.noise_std)),
        }

    @staticmethod
    def matrix(p: dict[str, float | bool], in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
        """The 2x3 map from input to output pixels: rotate and scale about the centre, translate by a fraction
        of the input size, mirror, and centre the result in the output (a centre crop when it is smaller)."""
        (h, w), (oh, ow) = in_hw, out_hw
        m = np.eye(3)
        if p["affine"]:
            a = np.deg2rad(float(p["angle"]))
            s = float(p["scale"])
            m[:2, :2] = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            m[:2, 2] = [float(p["tx"]) * w, float(p["ty"]) * h]
        m = m @ np.array([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1]])
        if p["flip"]:
            m = np.diag([-1.0, 1.0, 1.0]) @ m
        m = np.array([[1, 0, (ow - 1) / 2], [0, 1, (oh - 1) / 2], [0, 0, 1]]) @ m
        return m[:2].astype(np.float32)

    def __call__(
        self,
        image: np.ndarray,
        seed: int | None = None,
        boxes: np.ndarray | None = None,
        out_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The augmented image (``out_size`` square, default the input's size) and boxes (xyxy pixels, clipped;
        a box pushed out of view returns the image and boxes un-augmented, as a sample without its canal is no
        detector sample)."""
        rng = self.rng if seed is None else np.random.default_rng(seed)
        p = self.draw(rng)
        noise = rng.standard_normal(
            image.shape[:2] if out_size is None else (out_size, out_size), dtype=np.float32
        )
        h, w = image.shape[:2]
        out_hw = (h, w) if out_size is None else (out_size, out_size)
        m = self.matrix(p, (h, w), out_hw)
        if boxes is not None and len(boxes):
            boxes = _warp_boxes(np.asarray(boxes, dtype=np.float32), m, out_hw)
            if boxes is None:
                return image, None
        out = cv2.warpAffine(
            image.astype(np.float32, copy=False),
            m,
            (out_hw[1], out_hw[0]),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        if p["noise"]:
            out += noise * float(p["noise_std"])
        return out, boxes


def _warp_boxes(boxes: np.ndarray, m: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray | None:
    """Boxes through the warp: the bounding box of each warped box's corners, clipped; None if one vanishes."""
    x0, y0, x1, y1 = boxes.T
    corners = np.stack(
        [np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x0, y1], -1), np.stack([x1, y1], -1)], 1
    )
    # Box edges are continuous coordinates (pixel i spans [i, i+1]); the warp maps pixel centres.
    warped = (corners - 0.5) @ m[:, :2].T + m[:, 2] + 0.5
    lo, hi = warped.min(1), warped.max(1)
    out = np.concatenate([lo, hi], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, out_hw[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, out_hw[0])
    if np.any(out[:, 2] - out[:, 0] < 1) or np.any(out[:, 3] - out[:, 1] < 1):
        return None
    return out.astype(np.float32)
