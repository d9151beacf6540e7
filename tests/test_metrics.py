"""The stages' registered metrics on hand-built boxes and labels, where the right numbers are known."""

from __future__ import annotations

import pytest
import torch

from lumbar_lightning.models.metrics import TopBoxIoU, classification_metrics, detection_metrics


def _pred(boxes: list[list[float]], scores: list[float]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.ones(len(scores), dtype=torch.int64),
    }


def _truth(box: list[float]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.ones(1, dtype=torch.int64)}


def test_top_box_iou_scores_only_the_best_box_and_counts_a_miss_as_zero() -> None:
    metric = TopBoxIoU()
    truth = [0.0, 0.0, 10.0, 10.0]
    metric.update(
        [
            _pred([[0, 0, 10, 5], [0, 0, 10, 10]], [0.9, 0.1]),  # top box covers half: IoU 0.5, detected
            _pred([[20, 20, 30, 30], [0, 0, 10, 10]], [0.8, 0.7]),  # a perfect box, but not the top one: 0
            _pred([], []),  # nothing detected: 0
            _pred([[0, 0, 10, 10]], [0.3]),  # perfect: 1
        ],
        [_truth(truth)] * 4,
    )
    out = metric.compute()
    assert float(out["iou"]) == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert float(out["detection_rate"]) == pytest.approx(2 / 4)  # IoU 0.5 counts as found
    metric.reset()
    metric.update([_pred([[0, 0, 10, 4]], [0.9])], [_truth(truth)])  # IoU 0.4 < 0.5
    out = metric.compute()
    assert float(out["iou"]) == pytest.approx(0.4) and float(out["detection_rate"]) == 0.0


def test_detection_collection_reports_map_and_top_box_under_the_split_prefix() -> None:
    metrics = detection_metrics().clone(prefix="val/")
    metrics.update(
        [_pred([[0, 0, 10, 10]], [0.9]), _pred([[50, 50, 60, 60]], [0.9])], [_truth([0, 0, 10, 10])] * 2
    )
    out = metrics.compute()
    assert float(out["val/iou"]) == pytest.approx(0.5) and float(out["val/detection_rate"]) == pytest.approx(
        0.5
    )
    assert float(out["val/map_50"]) == pytest.approx(
        0.5, abs=0.02
    )  # one of two canals found, no false box first
    assert float(out["val/map_50"]) >= float(out["val/map"])


def test_classification_collection_counts_a_known_confusion() -> None:
    metrics = classification_metrics(4)
    target = torch.tensor([0, 0, 1, 2, 3, 3])
    preds = torch.tensor([0, 1, 1, 2, 3, 0])  # a B called for an A, and a D called A
    metrics.update(preds, target)
    out = metrics.compute()
    assert float(out["acc"]) == pytest.approx(4 / 6)
    confmat = out["confmat"].tolist()
    assert confmat[3][0] == 1 and confmat[0][1] == 1 and sum(map(sum, confmat)) == 6
    f1 = out["f1_per_class"].tolist()
    assert f1[2] == pytest.approx(1.0) and f1[0] == pytest.approx(0.5)  # A: precision 1/2, recall 1/2
    assert float(out["f1"]) == pytest.approx(sum(f1) / 4)
