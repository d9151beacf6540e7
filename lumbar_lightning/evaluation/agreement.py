"""Agreement between two label columns on the images both have (the paper's fair comparison)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score


def agreement(a: Sequence[str], b: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro and per-class F1, Cohen's kappa (plain and quadratic) and the confusion matrix.

    ``a`` is the reference (rows of the confusion matrix), ``b`` the other reader (columns). Entries outside
    ``classes`` (for example an empty grade) must be filtered out by the caller.
    """
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    classes = list(classes)
    if len(a) != len(b):
        raise ValueError(f"label columns differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return {"n": 0, "accuracy": float("nan"), "f1_macro": float("nan"), "kappa": float("nan")}
    per_class = f1_score(a, b, labels=classes, average=None, zero_division=0)
    present = [i for i, c in enumerate(classes) if np.any(a == c) or np.any(b == c)]
    return {
        "n": int(n),
        "accuracy": float(accuracy_score(a, b)),
        "f1_macro": float(np.mean(per_class[present])) if present else float("nan"),
        "f1_per_class": {c: float(f) for c, f in zip(classes, per_class, strict=True)},
        "kappa": _kappa(a, b, classes, None),
        "kappa_quadratic": _kappa(a, b, classes, "quadratic"),
        "confusion_matrix": confusion_matrix(a, b, labels=classes).tolist(),
        "classes": classes,
    }


def _kappa(a: np.ndarray, b: np.ndarray, classes: list[str], weights: str | None) -> float:
    if len(set(a) | set(b)) < 2:
        return 1.0 if np.all(a == b) else 0.0
    return float(cohen_kappa_score(a, b, labels=classes, weights=weights))


def severity(a: Sequence[str], b: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """What matters most on an ordinal scale: disagreements of two grades or more (a D called B or A, a C
    called A), their rate, and each class's recall (``a`` as the reference), C and D above all."""
    index = {c: i for i, c in enumerate(classes)}
    ia = np.array([index[v] for v in a], dtype=int)
    ib = np.array([index[v] for v in b], dtype=int)
    gross = int(np.sum(np.abs(ia - ib) >= 2))
    recall = {
        c: float(np.mean(ib[ia == i] == i)) if np.any(ia == i) else float("nan") for c, i in index.items()
    }
    rate = gross / len(ia) if len(ia) else float("nan")
    return {"gross_errors": gross, "gross_error_rate": rate, "recall_per_class": recall}


def weighted_log_loss(
    reference: Sequence[str], probs: np.ndarray, classes: Sequence[str], weights: Sequence[float]
) -> float:
    """The RSNA 2024 challenge's score: the log loss of the probability given to each image's reference class,
    each image weighted by its class's weight (1 / 2 / 4 for Normal/Mild, Moderate, Severe), rows normalised."""
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index[v] for v in reference], dtype=int)
    p = np.asarray(probs, dtype=float)
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-15, None)
    picked = np.clip(p[np.arange(len(truth)), truth], 1e-15, 1.0)
    w = np.asarray(weights, dtype=float)[truth]
    return float(-(w * np.log(picked)).sum() / w.sum()) if len(truth) else float("nan")
