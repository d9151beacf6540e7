"""``grade_shift_tta_mm``: a detected box's grade is the mean of five readings, the patch as detected and moved this
many millimetres left, right, up and down, the series reference moving with them; the level call reads the box
as detected, and a given box is read once, as given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import RecordingNet

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.series import canal_brightness, reference_slices
from lumbar_lightning.data.transforms import PatchGeometry
from lumbar_lightning.inference.ensemble import Serving
from lumbar_lightning.inference.pipeline import Pipeline
from lumbar_lightning.models.stages import CanalDetector, GradeClassifier, RootletClassifier


def _where_cut(x: torch.Tensor) -> torch.Tensor:
    """Grade logits that depend on where the patch was cut (its mean and its left-right balance)."""
    mean = x[:, 0].mean(dim=(1, 2))
    tilt = x[:, 0, :, : x.shape[-1] // 2].mean(dim=(1, 2)) - mean
    return torch.stack([8 * mean, 20 * tilt, -8 * mean, torch.zeros_like(mean)], dim=1)


def _pipeline(shift_mm: float, series_reference: bool = False) -> tuple[Pipeline, RecordingNet]:
    torch.manual_seed(0)
    rootlet = RootletClassifier(width=0.125)
    grader = GradeClassifier(width=0.125, series_reference=series_reference)
    grader.net = RecordingNet(_where_cut)
    geometry = PatchGeometry(16, field_mm=12.0)
    pipe = Pipeline(
        CanalDetector(image_size=64).predictor,
        rootlet.predictor,
        grader.predictor,
        geometry,
        batch_size=64,
        grade_shift_tta_mm=shift_mm,
    )
    return pipe, grader.net  # type: ignore[return-value]


def _images() -> tuple[list[np.ndarray], np.ndarray, list[float]]:
    rng = np.random.default_rng(3)
    images = [rng.random((80, 80), dtype=np.float32) for _ in range(4)]
    boxes = np.array(
        [[30, 30, 50, 50], [28, 32, 52, 48], [31, 29, 47, 51], [25, 25, 45, 45]], dtype=np.float32
    )
    return images, boxes, [0.5, 0.5, 0.25, 0.5]


def _moved(boxes: np.ndarray, spacing: list[float], dx: float, dy: float) -> np.ndarray:
    """Every box moved by (dx, dy) millimetres."""
    step = np.stack([np.full(len(boxes), dx), np.full(len(boxes), dy)], 1) / np.array(spacing)[:, None]
    return boxes + np.concatenate([step, step], 1).astype(np.float32)


def test_the_grade_is_the_mean_of_the_reading_and_four_shifted_ones() -> None:
    images, boxes, spacing = _images()
    pipe, net = _pipeline(0.0)
    out = pipe.classify(images, boxes, spacing, grade_shift_tta_mm=1.0)
    assert len(net.seen) == 5  # one batch per reading
    geometry = pipe.grade_patch
    for (dx, dy), seen in zip([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], net.seen, strict=True):
        want = np.stack(
            [
                geometry.crop(im, b, 1.0, mm)
                for im, b, mm in zip(images, _moved(boxes, spacing, dx, dy), spacing, strict=True)
            ]
        )
        np.testing.assert_allclose(seen[:, 0].numpy(), want, atol=1e-6)
    readings = [
        pipe.classify(images, _moved(boxes, spacing, dx, dy), spacing)
        for dx, dy in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    ]
    for key in ("grade_probs", "grade_probs_balanced"):
        np.testing.assert_allclose(
            out[key], np.mean([r[key] for r in readings], axis=0), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(out["rootlet_prob"], readings[0]["rootlet_prob"])  # the level: as detected
    assert np.abs(out["grade_probs"] - readings[0]["grade_probs"]).max() > 1e-3  # the shifts were read


def test_detected_boxes_are_read_shifted_and_given_boxes_as_given() -> None:
    images, boxes, spacing = _images()
    pipe, net = _pipeline(1.5)
    pipe.detect = lambda *args, **kwargs: (boxes, np.ones(len(boxes), dtype=np.float32))  # type: ignore[method-assign]
    detected = pipe.predict(images, pixel_mm=spacing)
    want = pipe.classify(images, boxes, spacing, grade_shift_tta_mm=1.5)["grade_probs"]
    np.testing.assert_allclose(np.stack([p.grade_probs for p in detected]), want, rtol=1e-6)
    net.seen.clear()
    given = pipe.predict(images, boxes=boxes, pixel_mm=spacing)
    assert len(net.seen) == 1
    np.testing.assert_array_equal(
        np.stack([p.grade_probs for p in given]), pipe.classify(images, boxes, spacing)["grade_probs"]
    )
    # A shift of 0 is the plain pipeline: one reading of the detected box.
    plain, plain_net = _pipeline(0.0)
    plain.detect = pipe.detect  # type: ignore[method-assign]
    np.testing.assert_array_equal(
        np.stack([p.grade_probs for p in plain.predict(images, pixel_mm=spacing)]),
        np.stack([p.grade_probs for p in given]),
    )
    assert len(plain_net.seen) == 1


def test_the_series_reference_moves_with_the_readings() -> None:
    images, boxes, spacing = _images()
    pipe, net = _pipeline(0.0, series_reference=True)
    level = pipe.classify(images, boxes, spacing, grade_shift_tta_mm=2.0)["rootlet_prob"] >= 0.5
    geometry = pipe.grade_patch
    left = net.seen[1]  # the second reading: every box 2 mm to the left
    moved = _moved(boxes, spacing, -2.0, 0.0)
    # The reference is chosen among the moved patches and cut at its own moved box.
    ref = int(reference_slices(np.zeros(4), canal_brightness(left[:, 0].numpy()), level)[0])
    want = geometry.crop(images[ref], moved[ref], 1.0, spacing[ref])
    np.testing.assert_allclose(left[:, 1].numpy(), np.stack([want] * 4), atol=1e-6)


def test_shifted_readings_need_spacing_and_a_non_negative_shift() -> None:
    images, boxes, _ = _images()
    with pytest.raises(ValueError, match="grade_shift_tta_mm must be >= 0"):
        _pipeline(-1.0)
    pipe, _ = _pipeline(1.0)
    pipe.grade_patch = pipe.patch = PatchGeometry(16)  # box-relative patches: no spacing needed to cut ...
    with pytest.raises(ValueError, match="needs every image's pixel spacing"):
        pipe.classify(images, boxes, grade_shift_tta_mm=1.0)  # ... but the shift is in millimetres


def test_serving_sets_the_shift_and_refuses_a_negative_one() -> None:
    pipe, _ = _pipeline(0.0)
    assert Serving.of({"grade_shift_tta_mm": 1.25}).apply(pipe).grade_shift_tta_mm == 1.25
    assert (
        Serving.of({"grade_shift_tta_mm": None}).apply(pipe).grade_shift_tta_mm == 1.25
    )  # null: as recorded
    assert Serving.of({"grade_shift_tta_mm": 0}).apply(pipe).grade_shift_tta_mm == 0.0
    with pytest.raises(DataContractError, match="grade_shift_tta_mm must be >= 0"):
        Serving.of({"grade_shift_tta_mm": -0.5}).apply(pipe)
