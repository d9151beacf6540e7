"""``PatchGeometry.crop`` of a float16 slice (how ``LumbarDataset`` holds pixels) converts only the pixels the warp
reads; the patch must be the one cut from the whole slice in float32, bit for bit, wherever the box lies."""

from __future__ import annotations

import numpy as np
import pytest

from lumbar_lightning.data.transforms import PatchGeometry


def _boxes(rng: np.random.Generator, n: int, side: int) -> list[np.ndarray]:
    centres = rng.uniform(-0.1 * side, 1.1 * side, size=(n, 2))  # some near, over or beyond an edge
    sizes = rng.uniform(4, 0.6 * side, size=(n, 2))
    return [np.concatenate([c - s / 2, c + s / 2]) for c, s in zip(centres, sizes, strict=True)]


@pytest.mark.parametrize(
    ("geometry", "pixel_mm"),
    [
        (PatchGeometry(size=40, field_mm=28.0), 0.7),  # the demo grade's field (zooms in: bilinear)
        (PatchGeometry(size=32, field_mm=28.0), 0.15),  # a field wider than the patch's pixels (shrinks)
        (PatchGeometry(size=32, margin=0.15), None),  # box-relative
    ],
)
def test_a_float16_slice_is_cut_as_its_float32_copy_bit_for_bit(
    geometry: PatchGeometry, pixel_mm: float
) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((320, 288)).astype(np.float16)  # not square: rows and columns must not be swapped
    whole = image.astype(np.float32)
    for i, box in enumerate(_boxes(rng, 300, 320)):
        context = (1.0, 1.35)[i % 2]
        scale_box = box * 1.3 if i % 3 == 0 else None
        kwargs = {"pixel_mm": pixel_mm, "scale_box": scale_box}
        got = geometry.crop(image, box, context, **kwargs)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, geometry.crop(whole, box, context, **kwargs), err_msg=f"box {box}")
