"""The series box choice on known cases: a confident box far from the series' canal loses to a nearer one."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import nn

from lumbar_lightning.data.transforms import PatchGeometry
from lumbar_lightning.inference.box_choice import SeriesBoxChoice
from lumbar_lightning.inference.pipeline import Pipeline
from lumbar_lightning.models.predictors import CanalBoxPredictor

CANAL = np.array([100.0, 100.0])
DISC = np.array([100.0, 70.0])  # 30 px anterior: 30 mm at 1 mm a pixel


def _series(n: int = 7, middle: list[tuple[float, np.ndarray]] | None = None):
    """``n`` slices whose only candidate is the canal (score 0.95), the middle one with ``middle``'s instead."""
    scores = [np.array([0.95]) for _ in range(n)]
    centres = [CANAL[None].copy() for _ in range(n)]
    if middle is not None:
        scores[n // 2] = np.array([s for s, _ in middle])
        centres[n // 2] = np.stack([c for _, c in middle])
    return scores, centres


def test_a_confident_box_off_the_series_canal_loses_to_the_canal() -> None:
    scores, centres = _series(middle=[(0.9, DISC), (0.3, CANAL + 1.0)])
    chosen = SeriesBoxChoice().choose(scores, centres, pixel_mm=[1.0] * 7)
    assert chosen[3] == 1 and set(chosen[[0, 1, 2, 4, 5, 6]]) == {0}
    # the distance is paid in millimetres: at 0.1 mm a pixel the disc is 3 mm away and its score wins
    assert SeriesBoxChoice().choose(scores, centres, pixel_mm=[0.1] * 7)[3] == 0


def test_the_top_box_stays_without_confident_neighbours_or_spacing() -> None:
    scores, centres = _series(middle=[(0.9, DISC), (0.3, CANAL)])
    weak = [s if i == 3 else np.array([0.4]) for i, s in enumerate(scores)]
    assert SeriesBoxChoice(min_score=0.5).choose(weak, centres, pixel_mm=[1.0] * 7)[3] == 0
    assert SeriesBoxChoice().choose(scores, centres)[3] == 0  # no pixel spacing: nothing to measure with
    assert SeriesBoxChoice().choose(scores, centres, pixel_mm=[float("nan")] * 7)[3] == 0
    empty = [np.zeros(0) if i == 3 else s for i, s in enumerate(scores)]
    assert (
        SeriesBoxChoice().choose(empty, [c if i != 3 else np.zeros((0, 2)) for i, c in enumerate(centres)])[3]
        == -1
    )


def test_neighbours_come_from_the_same_series_in_slice_order() -> None:
    """Given shuffled, with a second series whose canal sits where the first one's disc is."""
    scores, centres = _series(middle=[(0.9, DISC), (0.3, CANAL)])
    other_scores, other_centres = [np.array([0.95])] * 7, [DISC[None]] * 7
    all_scores, all_centres = scores + other_scores, centres + other_centres
    series = ["a"] * 7 + ["b"] * 7
    position = list(range(7)) + list(range(7))
    order = np.random.default_rng(0).permutation(14)
    chosen = SeriesBoxChoice().choose(
        [all_scores[i] for i in order],
        [all_centres[i] for i in order],
        series=[series[i] for i in order],
        position=[position[i] for i in order],
        pixel_mm=[1.0] * 14,
    )
    assert chosen[int(np.flatnonzero(order == 3)[0])] == 1
    # only the window's neighbours count: slices 3+ away along the series do not anchor slice 0
    first = (
        [np.array([0.9, 0.3])] + [np.array([0.95])] * 6,
        [np.stack([DISC, CANAL])] + [DISC[None]] * 2 + [CANAL[None]] * 4,
    )
    assert SeriesBoxChoice(window=2).choose(*first, pixel_mm=[1.0] * 7)[0] == 0
    assert SeriesBoxChoice(window=6).choose(*first, pixel_mm=[1.0] * 7)[0] == 1


def test_bad_settings_are_refused_and_the_choice_is_plain_data() -> None:
    for bad in ({"sigma_mm": 0.0}, {"window": 0}, {"min_score": 1.5}):
        with pytest.raises(ValueError, match="box_choice"):
            SeriesBoxChoice(**bad)
    choice = SeriesBoxChoice(sigma_mm=6.0, window=2, min_score=0.4)
    assert SeriesBoxChoice(**json.loads(json.dumps(choice.as_dict()))) == choice


def _boxes(centres: list[np.ndarray], half: float = 10.0) -> list[np.ndarray]:
    return [np.concatenate([c - half, c + half], axis=1) for c in centres]


def test_a_weak_box_far_from_the_series_canal_is_replaced_by_the_neighbours_box() -> None:
    """A severe level where the detector's only candidate is 30 mm off: no candidate is its canal, and its
    neighbours' median box stands in (what the grade then reads); a strong far box, or a weak near one, stays."""
    choice = SeriesBoxChoice()  # max_mm 20
    scores, centres = _series(middle=[(0.02, DISC)])
    chosen = choice.choose(scores, centres, pixel_mm=[1.0] * 7)
    assert chosen[3] == -1 and set(chosen[[0, 1, 2, 4, 5, 6]]) == {0}
    boxes = _boxes(centres)
    stand_in = choice.stand_in(chosen, scores, boxes)
    assert [s is None for s in stand_in] == [True, True, True, False, True, True, True]
    np.testing.assert_allclose(stand_in[3], np.concatenate([CANAL - 10.0, CANAL + 10.0]))
    # 15 mm away (under max_mm), a strong far candidate, or max_mm off: the candidate is kept
    near_scores, near_centres = _series(middle=[(0.02, CANAL + np.array([0.0, 15.0]))])
    assert choice.choose(near_scores, near_centres, pixel_mm=[1.0] * 7)[3] == 0
    strong, _ = _series(middle=[(0.9, DISC)])
    assert choice.choose(strong, centres, pixel_mm=[1.0] * 7)[3] == 0
    assert SeriesBoxChoice(max_mm=None).choose(scores, centres, pixel_mm=[1.0] * 7)[3] == 0
    # at 0.1 mm a pixel the candidate is 3 mm away: kept
    assert choice.choose(scores, centres, pixel_mm=[0.1] * 7)[3] == 0


def test_no_stand_in_without_confident_neighbours() -> None:
    scores, centres = _series(middle=[(0.02, DISC)])
    chosen = np.array([0, 0, 0, -1, 0, 0, 0])
    weak = [s if i == 3 else np.array([0.4]) for i, s in enumerate(scores)]
    assert SeriesBoxChoice().stand_in(chosen, weak, _boxes(centres))[3] is None
    with pytest.raises(ValueError, match="max_mm"):
        SeriesBoxChoice(max_mm=0.0)


class _ScriptedDetector(CanalBoxPredictor):
    """A detector whose candidates per image are given (detector-input pixels): ``Pipeline.detect``'s own work
    (scaling, the choice, the stand-in, calibration) is what is tested, not a trained network."""

    def __init__(self, script: list[tuple[list[list[float]], list[float]]], image_size: int = 100) -> None:
        super().__init__(nn.Identity(), image_size)
        self.script = script
        self.seen = 0

    def candidates(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in images:
            boxes, scores = self.script[self.seen]
            self.seen += 1
            out.append({"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores)})
        return out


def _pipeline(detector: CanalBoxPredictor, box_choice: SeriesBoxChoice | None) -> Pipeline:
    geometry = PatchGeometry(size=8)
    return Pipeline(detector, None, nn.Identity(), geometry, batch_size=2, box_choice=box_choice)  # type: ignore[arg-type]


def test_detect_gives_a_lost_slice_its_neighbours_box_scored_zero() -> None:
    """Slices stored at 200 px, detected at 100 px: slice 2's only candidate is weak and about 56 mm off the canal,
    slice 4 has none. Both get the median of their confident neighbours' boxes in stored pixels, scored 0 (through
    the fitted temperature); without a box choice slice 2 keeps its stray box and slice 4 a centred one."""
    canal = [[30.0, 40.0, 50.0, 60.0]]  # detector pixels; (60, 80, 100, 120) stored
    script = [
        ([[29.0, 40.0, 49.0, 60.0]], [0.9]),
        ([[31.0, 40.0, 51.0, 60.0]], [0.8]),
        ([[5.0, 5.0, 15.0, 15.0]], [0.3]),
        (canal, [0.95]),
        ([], []),
        (canal, [0.9]),
    ]
    n = len(script)
    images, spacing, series = [np.zeros((200, 200), np.float32)] * n, [0.5] * n, ["s"] * n
    detector = _ScriptedDetector(script)
    detector.temperature.fill_(2.0)
    boxes, scores = _pipeline(detector, SeriesBoxChoice()).detect(images, spacing, series, list(range(n)))
    stored = {0: [58.0, 80.0, 98.0, 120.0], 1: [62.0, 80.0, 102.0, 120.0], 3: [60.0, 80.0, 100.0, 120.0]}
    stored[5] = stored[3]
    for i, box in stored.items():
        np.testing.assert_allclose(boxes[i], box)
    # slice 2's confident neighbours within 3 slices: 0, 1, 3, 5; slice 4's: 1, 3, 5
    np.testing.assert_allclose(boxes[2], np.median([stored[i] for i in (0, 1, 3, 5)], axis=0))
    np.testing.assert_allclose(boxes[4], np.median([stored[i] for i in (1, 3, 5)], axis=0))
    expected = torch.sigmoid(torch.logit(torch.tensor([0.9, 0.8, 0.95, 0.9])) / 2.0).numpy()
    np.testing.assert_allclose(scores[[0, 1, 3, 5]], expected, rtol=1e-5)
    assert scores[2] < 1e-2 and scores[4] < 1e-2  # scored 0 before calibration

    boxes, scores = _pipeline(_ScriptedDetector(script), None).detect(images, spacing, series, list(range(n)))
    np.testing.assert_allclose(boxes[2], [10.0, 10.0, 30.0, 30.0])  # the top candidate, whatever it is
    np.testing.assert_allclose(boxes[4], [80.0, 80.0, 120.0, 120.0])  # the detector's centred box, scaled
    np.testing.assert_allclose(scores[[2, 4]], [0.3, 0.0], rtol=1e-6)
