"""Temperature scaling and calibration error on cases where the right answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from lumbar_lightning.evaluation.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    pool_bins,
    reliability_bins,
)
from lumbar_lightning.inference.pipeline import load_stage_weights
from lumbar_lightning.models.predictors import PatchPredictor
from lumbar_lightning.models.stages import GradeClassifier


def _overconfident(n: int, true_t: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z / true_t): a model reporting softmax(z) is overconfident by true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, size=(n, 4))
    p = softmax(z / true_t, axis=1)
    labels = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return log_softmax(z, axis=1), labels


def test_the_fitted_temperature_recovers_the_one_that_made_the_labels() -> None:
    for true_t in (0.5, 2.0):
        log_probs, labels = _overconfident(20000, true_t, seed=1)
        assert fit_temperature(log_probs, labels) == pytest.approx(true_t, rel=0.08)
    assert fit_temperature(np.zeros((5, 4)), np.zeros(5, dtype=int)) == 1.0  # one class only: nothing to fit


def test_scaling_fixes_calibration_on_held_out_data_and_keeps_every_call() -> None:
    val, val_y = _overconfident(5000, 2.0, seed=2)
    test, test_y = _overconfident(5000, 2.0, seed=3)
    report = calibration_report(val, val_y, test, test_y)
    assert report["ece_before"] > 0.08 and report["ece_after"] < 0.02, report
    assert sum(report["bins_after"]["count"]) == len(test_y)
    scaled = log_softmax(test / report["temperature"], axis=1)
    assert (scaled.argmax(1) == test.argmax(1)).all()  # accuracy, F1 and confusion matrices cannot move


def test_binned_ece_equals_torchmetrics_and_pools_across_folds_exactly() -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    log_probs, labels = _overconfident(3000, 1.5, seed=4)
    probs = np.exp(log_probs)
    ours = expected_calibration_error(reliability_bins(probs, labels))
    theirs = float(
        multiclass_calibration_error(torch.tensor(probs), torch.tensor(labels), num_classes=4, n_bins=15)
    )
    assert ours == pytest.approx(theirs, abs=1e-6)
    halves = pool_bins(
        [reliability_bins(probs[:1000], labels[:1000]), reliability_bins(probs[1000:], labels[1000:])]
    )
    assert expected_calibration_error(halves) == pytest.approx(ours, abs=1e-12)


def test_a_predictor_divides_its_final_log_probs_by_the_temperature() -> None:
    grader = GradeClassifier(width=0.125, prior_correction=True)
    grader.set_class_prior(np.array([70, 10, 10, 10]))
    grader.eval()
    x = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        plain = grader.predictor.predict_step({"image": x})
        grader.set_temperature(2.0)
        hot = grader.predictor.predict_step({"image": x})
    want = torch.softmax(plain["log_probs"] / 2.0, dim=-1)
    torch.testing.assert_close(hot["probs"], want)
    assert torch.equal(hot["probs"].argmax(-1), plain["probs"].argmax(-1))
    assert grader.state_dict()["temperature"] == 2.0  # saved with the weights


def test_a_checkpoint_from_before_calibration_loads_uncalibrated(tmp_path: Path) -> None:
    grader = GradeClassifier(width=0.125)
    state = {k: v for k, v in grader.state_dict().items() if k != "temperature"}
    torch.save({"state_dict": state, "hyper_parameters": dict(grader.hparams)}, tmp_path / "old.ckpt")
    predictor = PatchPredictor.build(("A", "B", "C", "D"), width=0.125)
    predictor.temperature.fill_(3.0)
    load_stage_weights(predictor, tmp_path / "old.ckpt")
    assert float(predictor.temperature) == 1.0


def test_the_coverage_curve_refers_the_least_confident_first() -> None:
    import pandas as pd

    from lumbar_lightning.evaluation.referral import coverage_curve

    reference = pd.Series(list("AAAABBBBCC"))
    prediction = pd.Series(list("AAAABBBBDD"))  # the last two wrong ...
    confidence = pd.Series([0.9, 0.8, 0.95, 0.7, 0.85, 0.9, 0.75, 0.8, 0.3, 0.5])  # ... and least confident
    curve = coverage_curve(reference, prediction, confidence, coverages=(1.0, 0.9, 0.8, 0.5))
    assert curve["kept"] == [10, 9, 8, 5]
    assert curve["accuracy"] == pytest.approx([0.8, 8 / 9, 1.0, 1.0])


def test_the_detector_rescales_its_top_score_but_never_moves_the_box() -> None:
    from torch import nn

    from lumbar_lightning.models.metrics import detection_outcomes
    from lumbar_lightning.models.predictors import CanalBoxPredictor

    class TwoBoxes(nn.Module):
        def forward(self, images):
            return [
                {
                    "boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0], [0.0, 0.0, 4.0, 4.0]]),
                    "scores": torch.tensor([0.8, 0.1]),
                }
                for _ in images
            ]

    detector = CanalBoxPredictor(TwoBoxes(), 64)
    images = [torch.zeros(1, 64, 64)] * 2
    boxes, raw = detector.top_box(images)
    detector.temperature.fill_(2.0)
    moved, scaled = detector.top_box(images)
    assert torch.equal(boxes, moved) and raw[0] == pytest.approx(0.8)
    assert scaled[0] == pytest.approx(1 / (1 + (0.2 / 0.8) ** 0.5))  # sigmoid(logit(0.8) / 2)
    # What calibration fits against: log P(missed), log P(found), and whether the top box is a detection.
    batch = detector.predict_step(
        {
            "image": images,
            "boxes": [torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.tensor([[40.0, 40.0, 60.0, 60.0]])],
        }
    )
    log_probs, found = detection_outcomes([batch])
    assert found.tolist() == [1, 0]
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=1), 1.0)
