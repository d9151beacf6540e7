"""Significance and uncertainty for the study's comparisons, from scipy (no hand-rolled distributions).

- ``paired_ttest``: the paper's two-sample paired t-test on per-image ordinal codes (does one reader grade higher?)
- ``mcnemar``: exact McNemar test on per-image correctness of two classifiers against one rater
- ``bootstrap_ci``: 95% interval of an agreement, resampling patients (images of a patient are not independent)
- ``fold_summary`` / ``paired_fold_ttest``: mean and spread across folds, and run-vs-run on per-fold metrics
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from lumbar_lightning.data.grading import active


def ordinal_codes(labels: Sequence[str]) -> np.ndarray:
    """Ordinal codes for the paired t-test: the active scheme's grades 0, 1, ... (A=0..D=3); cord 0, rootlet 1."""
    ordinal = {**active().index, "cord": 0, "rootlet": 1}
    try:
        return np.array([ordinal[str(x)] for x in labels], dtype=float)
    except KeyError as exc:
        raise ValueError(f"no ordinal code for label {exc.args[0]!r}") from None


def paired_ttest(a: Sequence[str], b: Sequence[str]) -> dict[str, float]:
    """Paired t-test of ordinal codes of ``b`` against ``a``; ``mean_diff`` > 0 means ``b`` reads higher."""
    x, y = ordinal_codes(a), ordinal_codes(b)
    diff = y - x
    if len(diff) < 2 or np.all(diff == diff[0]):
        return {
            "t": float("nan"),
            "p": 1.0 if np.all(diff == 0) else 0.0,
            "mean_diff": float(np.mean(diff)) if len(diff) else 0.0,
        }
    res = stats.ttest_rel(y, x)
    return {"t": float(res.statistic), "p": float(res.pvalue), "mean_diff": float(np.mean(diff))}


def mcnemar(reference: Sequence[str], pred_a: Sequence[str], pred_b: Sequence[str]) -> dict[str, Any]:
    """Exact McNemar test: do classifiers A and B make different numbers of errors against ``reference``?

    The discordant pairs (A right and B wrong: ``b``; A wrong and B right: ``c``) are tested with a two-sided
    binomial test at p = 0.5, the exact form of McNemar's test.
    """
    ref, a, b_ = (np.asarray(v, dtype=object) for v in (reference, pred_a, pred_b))
    right_a, right_b = a == ref, b_ == ref
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"a_only_right": b, "b_only_right": c, "p": p, "n": len(ref)}


def bootstrap_ci(
    a: Sequence[str],
    b: Sequence[str],
    patients: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the agreement of ``a`` and ``b``, resampling whole patients."""
    agree = np.asarray(a, dtype=object) == np.asarray(b, dtype=object)
    ids, inverse = np.unique(np.asarray(patients, dtype=object), return_inverse=True)
    if len(ids) < 2:
        value = float(np.mean(agree)) if len(agree) else float("nan")
        return value, value
    hits = np.bincount(inverse, weights=agree.astype(float), minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(float)

    def accuracy(sample: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = sample.astype(int)
        return hits[idx].sum(axis=axis) / counts[idx].sum(axis=axis)

    res = stats.bootstrap(
        (np.arange(len(ids)),),
        accuracy,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def fold_summary(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation across folds (NaN folds ignored)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return {
        "mean": float(np.mean(v)) if len(v) else float("nan"),
        "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
        "n_folds": len(v),
    }


def paired_fold_ttest(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Run-vs-run: paired t-test of a metric over the same folds (``mean_diff`` = mean of b - a)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = y - x
    if len(diff) < 2 or np.allclose(diff, diff[0]):
        return {
            "t": float("nan"),
            "p": 1.0 if np.allclose(diff, 0) else float("nan"),
            "mean_diff": float(np.mean(diff)),
        }
    res = stats.ttest_rel(y, x)
    return {"t": float(res.statistic), "p": float(res.pvalue), "mean_diff": float(np.mean(diff))}
