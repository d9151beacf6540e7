"""Which of the detector's candidate boxes a slice keeps: the one that fits its series, not only the top score.

The canal moves little from one axial slice to the next, while the detector's commonest confident mistake is a
bright structure a few centimetres away (the disc nucleus of a severe level, where the canal itself is small and
dark). ``SeriesBoxChoice`` anchors each slice on the median centre of its neighbours' confident top boxes and keeps
the candidate with the best score once its distance to that anchor is paid for. Measured on three cohorts in
``experiments/cohorts/README.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SeriesBoxChoice:
    """Keep, per slice, the candidate maximising ``log(score) - d^2 / (2 sigma_mm^2)``.

    ``d``: the distance (mm, from the pixel spacing) of the candidate's centre to the median centre of the top
    boxes of the slice's neighbours within ``window`` slices of its series that score at least ``min_score``.
    A slice without such a neighbour, or without a pixel spacing, keeps its top box. A slice whose kept candidate
    scores under ``min_score`` and lies over ``max_mm`` from that centre keeps none (-1): no candidate is its
    canal, and ``stand_in`` gives it its neighbours' box (``max_mm: null``: never).
    """

    sigma_mm: float = 8.0
    window: int = 3
    min_score: float = 0.5
    max_mm: float | None = 20.0

    def __post_init__(self) -> None:
        if (
            self.sigma_mm <= 0
            or self.window < 1
            or not 0.0 <= self.min_score <= 1.0
            or (self.max_mm is not None and self.max_mm <= 0)
        ):
            raise ValueError(
                "box_choice: sigma_mm must be > 0, window >= 1, min_score in [0, 1] and max_mm > 0 or null;"
                f" got {self}"
            )

    def as_dict(self) -> dict[str, float]:
        """Plain data for ``pipeline.json``: ``lumbar-predict`` rebuilds the same choice from it."""
        return dataclasses.asdict(self)

    def choose(
        self,
        scores: Sequence[np.ndarray],
        centres: Sequence[np.ndarray],
        series: Sequence[object] | None = None,
        position: Sequence[float] | None = None,
        pixel_mm: Sequence[float | None] | None = None,
    ) -> np.ndarray:
        """The index of the kept candidate per image (-1 where it has none).

        ``scores[i]`` and ``centres[i]`` (shape ``(n_i, 2)``, stored-image pixels) are image ``i``'s candidates;
        ``series`` groups the images (default: one series), ``position`` orders them within it (default: as
        given).
        """
        top, near = self._confident_neighbours(scores, series, position)
        spacing = [None] * len(scores) if pixel_mm is None else list(pixel_mm)
        chosen = top.copy()
        for i, mm in enumerate(spacing):
            if top[i] < 0 or mm is None or not np.isfinite(mm) or not near[i]:
                continue
            anchor = np.median([centres[j][top[j]] for j in near[i]], axis=0)
            d_mm = np.linalg.norm(np.asarray(centres[i]) - anchor, axis=1) * float(mm)
            fit = np.log(np.clip(scores[i], 1e-6, 1.0)) - d_mm**2 / (2 * self.sigma_mm**2)
            best = int(np.argmax(fit))
            lost = self.max_mm is not None and d_mm[best] > self.max_mm
            chosen[i] = -1 if lost and scores[i][best] < self.min_score else best
        return chosen

    def stand_in(
        self,
        chosen: np.ndarray,
        scores: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray],
        series: Sequence[object] | None = None,
        position: Sequence[float] | None = None,
    ) -> list[np.ndarray | None]:
        """For each image that ``choose`` kept no candidate of (-1), the median of its neighbours' confident top
        boxes (``None`` where a candidate was kept, or without such a neighbour). The detector finds least where
        the canal is smallest and darkest, a severe level: a box guessed elsewhere there is read as a free canal,
        and as the series' freest canal it misleads the grade of every other slice too (experiments/cohorts)."""
        top, near = self._confident_neighbours(scores, series, position)
        return [
            np.median([np.asarray(boxes[j])[top[j]] for j in near[i]], axis=0)
            if chosen[i] < 0 and near[i]
            else None
            for i in range(len(scores))
        ]

    def _confident_neighbours(
        self,
        scores: Sequence[np.ndarray],
        series: Sequence[object] | None,
        position: Sequence[float] | None,
    ) -> tuple[np.ndarray, list[list[int]]]:
        """Each image's top candidate (-1: none), and its neighbours: the other images within ``window`` slices
        of it in its series (``series`` groups, ``position`` orders) whose top box scores at least ``min_score``."""
        n = len(scores)
        top = np.array([int(np.argmax(s)) if len(s) else -1 for s in scores])
        confident = np.array([len(s) > 0 and float(np.max(s)) >= self.min_score for s in scores], dtype=bool)
        groups = np.zeros(n) if series is None else np.asarray(series)
        where = np.arange(n, dtype=float) if position is None else np.asarray(position, dtype=float)
        near: list[list[int]] = [[] for _ in range(n)]
        for group in np.unique(groups):
            members = np.flatnonzero(groups == group)
            ordered = members[np.argsort(where[members], kind="stable")]
            for k, i in enumerate(ordered):
                window = ordered[max(0, k - self.window) : k + self.window + 1]
                near[i] = [int(j) for j in window if j != i and confident[j]]
        return top, near
