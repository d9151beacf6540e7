"""The series box choice on known cases: a confident box far from the series' canal loses to a nearer one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lumbar_lightning.inference.box_choice import SeriesBoxChoice

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
