"""Referral: grade the images the classifier is sure of, send the rest to a human, and see what that buys.

A reading room accepts a tool that is right where it speaks and says when it is unsure. The curve here is the
agreement on the images kept against the share kept (coverage), when the least confident are referred first;
the raters' own agreement is the line to beat.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: The coverages the report tabulates (share of graded images the classifier keeps).
COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def coverage_curve(
    reference: pd.Series,
    prediction: pd.Series,
    confidence: pd.Series,
    coverages: tuple[float, ...] = COVERAGES,
) -> dict[str, list[float]]:
    """Agreement with ``reference`` on the most confident ``coverage`` share of the images (ties broken by the
    images' order, so the curve is the same on every run)."""
    order = np.argsort(-confidence.to_numpy(dtype=float), kind="stable")
    hits = (reference.to_numpy() == prediction.to_numpy())[order]
    kept, accuracy = [], []
    for c in coverages:
        n = max(1, round(c * len(hits))) if len(hits) else 0
        kept.append(n)
        accuracy.append(float(hits[:n].mean()) if n else float("nan"))
    return {"coverage": list(coverages), "kept": kept, "accuracy": accuracy}


def referral_table(frame: pd.DataFrame, pairs: list[tuple[str, str]], raters: list[str]) -> dict[str, Any]:
    """For each (reference, classifier) pair whose classifier has a confidence column (``conf_<C>``): the
    coverage curve on the images both graded. ``rater_agreement``: the raters' agreement on the same set, the
    line to beat."""
    out: dict[str, Any] = {"pairs": {}}
    for ref, reader in pairs:
        column = f"conf_{reader}"
        if column not in frame:
            continue
        keep = (frame[f"grade_{ref}"] != "") & (frame[f"grade_{reader}"] != "")
        part = frame[keep]
        out["pairs"][f"{ref}-{reader}"] = coverage_curve(
            part[f"grade_{ref}"], part[f"grade_{reader}"], part[column].astype(float)
        )
    if len(raters) >= 2:
        a, b = raters[:2]
        both = (frame[f"grade_{a}"] != "") & (frame[f"grade_{b}"] != "")
        out["rater_agreement"] = float(
            (frame.loc[both, f"grade_{a}"] == frame.loc[both, f"grade_{b}"]).mean()
        )
    return out
