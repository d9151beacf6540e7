"""``grade_shift_tta_mm``: the grade is the mean of nine readings whose patch centres sit on a 3 x 3 grid this many
millimetres apart, the series reference moving with them; the level call reads the box as detected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.series import canal_brightness, reference_slices
from lumbar_lightning.data.transforms import PatchGeometry
from lumbar_lightning.inference.ensemble import Serving
from lumbar_lightning.inference.pipeline import Pipeline
from lumbar_lightning.models.stages import CanalDetector, GradeClassifier, RootletClassifier


class _Recorder(nn.Module):
    """Grade logits that depend on where the patch was cut (its mean and its left-right balance)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        mean = x[:, 0].mean(dim=(1, 2))
        tilt = x[:, 0, :, : x.shape[-1] // 2].mean(dim=(1, 2)) - mean
        return torch.stack([8 * mean, 20 * tilt, -8 * mean, torch.zeros_like(mean)], dim=1)


def _pipeline(shift_mm: float, series_reference: bool = False) -> tuple[Pipeline, _Recorder]:
    torch.manual_seed(0)
    rootlet = RootletClassifier(width=0.125)
    grader = GradeClassifier(width=0.125, series_reference=series_reference)
    grader.net = _Recorder()
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


def test_the_grade_is_the_mean_of_nine_shifted_readings() -> None:
    images, boxes, spacing = _images()
    shifted, net = _pipeline(1.0)
    out = shifted.classify(images, boxes, spacing)
    assert len(net.seen) == 9  # one batch per reading
    plain, _ = _pipeline(0.0)
    readings = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            step = (
                np.stack([np.full(4, dx), np.full(4, dy)], 1) / np.array(spacing)[:, None]
            )  # 1 mm in pixels
            moved = boxes + np.concatenate([step, step], 1).astype(np.float32)
            readings.append(plain.classify(images, moved, spacing))
    # The centre reading is the plain pipeline's; the grade is the mean of the nine, the level the plain one.
    geometry = shifted.grade_patch
    for i in range(4):
        np.testing.assert_allclose(
            net.seen[4][i, 0].numpy(), geometry.crop(images[i], boxes[i], 1.0, spacing[i])
        )
    for key in ("grade_probs", "grade_probs_balanced"):
        np.testing.assert_allclose(
            out[key], np.mean([r[key] for r in readings], axis=0), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(out["rootlet_prob"], readings[4]["rootlet_prob"])
    assert np.abs(out["grade_probs"] - readings[4]["grade_probs"]).max() > 1e-3  # the shifts were read
    # A shift of 0 reads one patch, exactly the plain pipeline.
    centre = _pipeline(0.0)[0].classify(images, boxes, spacing)["grade_probs"]
    np.testing.assert_array_equal(centre, readings[4]["grade_probs"])


def test_the_series_reference_moves_with_the_readings() -> None:
    images, boxes, spacing = _images()
    pipe, net = _pipeline(2.0, series_reference=True)
    level = pipe.classify(images, boxes, spacing)["rootlet_prob"] >= 0.5
    geometry = pipe.grade_patch
    first = net.seen[0]  # dx = dy = -1: every box 2 mm up and to the left
    for i in range(4):
        moved = boxes[i] - 2.0 / spacing[i]
        np.testing.assert_allclose(
            first[i, 0].numpy(), geometry.crop(images[i], moved, 1.0, spacing[i]), atol=1e-6
        )
    # The reference is chosen among the moved patches and cut at its own moved box.
    ref = int(reference_slices(np.zeros(4), canal_brightness(first[:, 0].numpy()), level)[0])
    want = geometry.crop(images[ref], boxes[ref] - 2.0 / spacing[ref], 1.0, spacing[ref])
    np.testing.assert_allclose(first[:, 1].numpy(), np.stack([want] * 4), atol=1e-6)


def test_shifted_readings_need_spacing_and_a_non_negative_shift() -> None:
    images, boxes, _ = _images()
    with pytest.raises(ValueError, match="grade_shift_tta_mm must be >= 0"):
        _pipeline(-1.0)
    pipe, _ = _pipeline(1.0)
    pipe.grade_patch = pipe.patch = PatchGeometry(16)  # box-relative patches: no spacing needed to cut ...
    with pytest.raises(ValueError, match="needs every image's pixel spacing"):
        pipe.classify(images, boxes)  # ... but the shift is in millimetres


def test_serving_sets_the_shift_and_refuses_a_negative_one() -> None:
    pipe, _ = _pipeline(0.0)
    assert Serving.of({"grade_shift_tta_mm": 1.25}).apply(pipe).grade_shift_tta_mm == 1.25
    assert (
        Serving.of({"grade_shift_tta_mm": None}).apply(pipe).grade_shift_tta_mm == 1.25
    )  # null: as recorded
    assert Serving.of({"grade_shift_tta_mm": 0}).apply(pipe).grade_shift_tta_mm == 0.0
    with pytest.raises(DataContractError, match="grade_shift_tta_mm must be >= 0"):
        Serving.of({"grade_shift_tta_mm": -0.5}).apply(pipe)
