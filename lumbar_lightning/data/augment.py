"""Training augmentation, chosen in YAML (``data/augment=...``): the paper's rotation, scaling, translation,
horizontal flip and zero-mean Gaussian noise, as an albumentations pipeline or as one cv2 warp.

Both augmenters answer the same call, ``augment(image, seed, boxes=None, out_size=None) -> (image, boxes)``,
on an (H, W) or (H, W, C) float32 image. Each training item is augmented from its own seed (the sampler's (seed, epoch, index)), never from a per-worker
generator, so a run draws the same augmentations with 0, 1 or N loader workers and after a resume. Boxes are
``x_min, y_min, x_max, y_max`` in pixels; a box pushed out of view returns the item un-augmented, as a slice
without its canal is no detector sample. ``out_size`` cuts the (larger, context) training patch back to the
model's patch size around its centre.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import cv2
import numpy as np

from lumbar_lightning.data.transforms import centre_crop


class Augmenter(Protocol):
    """What a dataset calls for one training item."""

    def __call__(
        self,
        image: np.ndarray,
        seed: int | None = None,
        boxes: np.ndarray | None = None,
        out_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]: ...


class AlbumentationsAugment:
    """An ``albumentations.Compose`` (built by Hydra from ``data.augment.compose``) applied with a per-item seed.

    Any albumentations transform is one more entry under ``compose.transforms``. The seed is given to every
    transform as one shared generator pair (``Compose.set_random_seed`` gives each transform its own generator
    from the *same* seed, so their first draws coincide: a flip would always follow an affine's p-check).
    albumentations' own worker reseeding is not used: the seed comes from the item.
    """

    def __init__(self, compose: Any) -> None:
        self.compose = compose
        self._transforms = list(_leaf_transforms(compose))
        self._boxes = compose.processors.get("bboxes") is not None

    def reseed(self, seed: int | None) -> None:
        """Every transform draws from one generator pair seeded by ``seed``."""
        generator, py_random = np.random.default_rng(seed), random.Random(seed)
        self.compose.random_generator, self.compose.py_random = generator, py_random
        for t in self._transforms:
            t.set_random_state(generator, py_random)

    def __call__(
        self,
        image: np.ndarray,
        seed: int | None = None,
        boxes: np.ndarray | None = None,
        out_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if seed is not None:
            self.reseed(seed)
        image = np.ascontiguousarray(image, dtype=np.float32)
        if boxes is None or not len(boxes):
            out = self.compose(image=image)["image"]
            return centre_crop(out, out_size), boxes
        if not self._boxes:
            raise ValueError(
                "the detector's augmentation needs box-aware transforms: give data.augment.compose a "
                "bbox_params (albumentations.BboxParams with format: pascal_voc)"
            )
        if out_size is not None:
            raise ValueError("out_size (a centre crop) is for patches; detector slices keep their size")
        # (boxes on the image's edge are clipped by the preset's BboxParams(clip=True))
        result = self.compose(image=image, bboxes=np.asarray(boxes, dtype=np.float32))
        moved = np.asarray(result["bboxes"], dtype=np.float32).reshape(-1, 4)
        if len(moved) != len(boxes):  # a box left the image (or fell under min_visibility)
            return image, None
        return result["image"], moved


def _leaf_transforms(compose: Any) -> list[Any]:
    """Every transform of a (possibly nested) albumentations composition."""
    out = []
    for t in getattr(compose, "transforms", []):
        out.extend(_leaf_transforms(t) if hasattr(t, "transforms") else [t])
    return out


class PaperAugment:
    """The paper's augmentation as one cv2 warp per item: rotation, scaling and translation (with probability
    ``p_affine``), the horizontal flip and, for patches, the centre crop folded into the same matrix, then
    zero-mean Gaussian noise (with probability ``p_noise``, its std drawn from [0, ``noise_std``]).

    The distributions are those the albumentations preset (``data/augment=albumentations``) draws; this path
    skips albumentations' per-call bookkeeping (composition, parameter and box checks), which costs more than the
    warp itself. ``make bench`` measures both. A call with ``seed=None`` draws from the instance's generator.
    """

    def __init__(
        self,
        rotate_deg: float = 10.0,
        scale: float = 0.1,
        translate: float = 0.06,
        hflip: float = 0.5,
        noise_std: float = 0.03,
        p_affine: float = 0.8,
        p_noise: float = 0.5,
        seed: int = 0,
    ) -> None:
        # (a plain class, not a dataclass: Hydra would turn a dataclass handed to a datamodule into a config)
        self.rotate_deg, self.scale, self.translate, self.hflip = rotate_deg, scale, translate, hflip
        self.noise_std, self.p_affine, self.p_noise = noise_std, p_affine, p_noise
        self.rng = np.random.default_rng(seed)

    def draw(self, rng: np.random.Generator) -> dict[str, float | bool]:
        """One item's parameters (every value is drawn, used or not, so the stream never depends on them)."""
        u = rng.random(3)
        return {
            "affine": bool(u[0] < self.p_affine),
            "angle": float(rng.uniform(-self.rotate_deg, self.rotate_deg)),
            "scale": float(rng.uniform(1 - self.scale, 1 + self.scale)),
            "tx": float(rng.uniform(-self.translate, self.translate)),
            "ty": float(rng.uniform(-self.translate, self.translate)),
            "flip": bool(u[1] < self.hflip),
            "noise": bool(u[2] < self.p_noise),
            "noise_std": float(rng.uniform(0.0, self.noise_std)),
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
        # channel by channel: cv2's multi-channel warp rounds differently from its single-channel one
        channels = image[..., None] if image.ndim == 2 else image
        out = np.stack(
            [
                cv2.warpAffine(
                    np.ascontiguousarray(channels[..., c], dtype=np.float32),
                    m,
                    (out_hw[1], out_hw[0]),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0.0,
                )
                for c in range(channels.shape[-1])
            ],
            axis=-1,
        )
        if p["noise"]:  # one draw for all channels
            out += noise[..., None] * float(p["noise_std"])
        out = out[..., 0] if image.ndim == 2 else out
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
