"""Calibration: how far a classifier's confidence is from its accuracy, and temperature scaling to close the gap.

A grading tool in a reading room is only safe if "90% sure" means right nine times in ten: referral (send the
least confident images to a human) ranks images by that confidence. Temperature scaling (Guo et al., 2017)
divides the final log-probabilities by one scalar fitted on the validation split; it never changes which class
wins, so accuracy, F1 and the confusion matrix stay as they were.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

#: Equal-width confidence bins of the reliability diagram and the ECE (the usual 15).
N_BINS = 15
#: Temperatures searched: from 20x sharper to 20x softer; beyond that a fold's split is too small to say.
LOG_T_BOUNDS = (-3.0, 3.0)


def scaled_log_probs(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """Log-probabilities divided by ``temperature`` and renormalised (float64)."""
    return log_softmax(np.asarray(log_probs, dtype=np.float64) / float(temperature), axis=-1)


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels``; 1.0 when there is nothing to fit.

    A bounded scalar search in float64 on log T: deterministic, and the same on every CPU up to rounding of the
    inputs (which come from the locked, pinned network).
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or len(np.unique(labels)) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        return float(-scaled_log_probs(log_probs, np.exp(log_t))[np.arange(len(labels)), labels].mean())

    best = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x)) if nll(best.x) < nll(0.0) else 1.0


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, list[float]]:
    """Per equal-width bin of top-label confidence: image count, summed confidence and summed hits.

    Sums, not means, so that bins of several folds add up to the pooled diagram exactly (``pool_bins``).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=-1) if len(probs) else np.zeros(0)
    hits = (probs.argmax(axis=-1) == labels).astype(np.float64) if len(probs) else np.zeros(0)
    which = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    return {
        "count": np.bincount(which, minlength=n_bins).astype(float).tolist(),
        "confidence": np.bincount(which, weights=confidence, minlength=n_bins).tolist(),
        "hits": np.bincount(which, weights=hits, minlength=n_bins).tolist(),
    }


def pool_bins(bins: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Several folds' ``reliability_bins`` as one diagram."""
    if not bins:
        return {"count": [0.0] * N_BINS, "confidence": [0.0] * N_BINS, "hits": [0.0] * N_BINS}
    return {k: np.sum([b[k] for b in bins], axis=0).tolist() for k in ("count", "confidence", "hits")}


def expected_calibration_error(bins: dict[str, list[float]]) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    count = np.asarray(bins["count"], dtype=np.float64)
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(bins["hits"]) - np.asarray(bins["confidence"]))
    return float(gap.sum() / count.sum())


def calibration_report(
    val_log_probs: np.ndarray, val_labels: np.ndarray, test_log_probs: np.ndarray, test_labels: np.ndarray
) -> dict[str, Any]:
    """Fit the temperature on validation; the test split's ECE and reliability bins before and after."""
    temperature = fit_temperature(val_log_probs, val_labels)
    before = reliability_bins(np.exp(np.asarray(test_log_probs, dtype=np.float64)), test_labels)
    after = reliability_bins(np.exp(scaled_log_probs(test_log_probs, temperature)), test_labels)
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(before),
        "ece_after": expected_calibration_error(after),
        "bins_before": before,
        "bins_after": after,
    }


def calibration_summary(fold_metrics: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per rater and patch stage: each fold's temperature, and the test folds' ECE before and after scaling,
    pooled (one diagram over every test image) and per fold. ``fold_metrics``: rater -> every fold's metrics.json.
    """
    out: dict[str, dict[str, Any]] = {}
    for rater, folds in fold_metrics.items():
        for stage in ("detector", "rootlet", "grade", "baseline"):
            # the detector's metrics are its test set's; a patch stage's are under gt_box (the rater's boxes)
            found = [
                m.get(stage, {}) if stage == "detector" else m.get(stage, {}).get("gt_box", {}) for m in folds
            ]
            reports = [f["calibration"] for f in found if "calibration" in f]
            if not reports:
                continue
            before = pool_bins([r["bins_before"] for r in reports])
            after = pool_bins([r["bins_after"] for r in reports])
            out.setdefault(rater, {})[stage] = {
                "temperature": [float(r["temperature"]) for r in reports],
                "ece_before": expected_calibration_error(before),
                "ece_after": expected_calibration_error(after),
                "ece_before_per_fold": [float(r["ece_before"]) for r in reports],
                "ece_after_per_fold": [float(r["ece_after"]) for r in reports],
                "bins_before": before,
                "bins_after": after,
            }
    return out
