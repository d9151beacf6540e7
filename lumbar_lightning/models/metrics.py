"""The stages' metrics, as registered torchmetrics: Lightning moves them with the module and syncs them across
processes, so no stage gathers or averages by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score
from torchmetrics.detection import IntersectionOverUnion, MeanAveragePrecision
from torchmetrics.utilities import dim_zero_cat
from torchvision.ops import box_iou

#: A slice counts as detected when its top box overlaps the true canal box by at least this much.
DETECTION_IOU = 0.5


class TopBoxIoU(IntersectionOverUnion):
    """IoU of each image's best-scoring box with its (first) true box, 0 where nothing was detected, and the
    detection rate: the share of images whose top box reaches ``DETECTION_IOU``.

    The pipeline keeps only the top box, so this, not the all-pairs IoU of the parent class, is what the next
    stage sees.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(box_format="xyxy", respect_labels=False, **kwargs)

    def update(self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]) -> None:
        top = []
        for p in preds:
            keep = p["scores"].argmax()[None] if len(p["boxes"]) else slice(0, 0)
            top.append({k: p[k][keep] for k in ("boxes", "scores", "labels")})
        super().update(top, [{k: t[k][:1] for k in ("boxes", "labels")} for t in target])

    def compute(self) -> dict[str, torch.Tensor]:
        ious = dim_zero_cat([m.flatten() for m in self.iou_matrix]) if self.iou_matrix else torch.zeros(1)
        return {"iou": ious.mean(), "detection_rate": (ious >= DETECTION_IOU).float().mean()}


def detection_metrics() -> MetricCollection:
    """mAP (COCO, and at IoU 0.5) over every box, and the top box's IoU and detection rate; cloned per split."""
    return MetricCollection(
        {"map": MeanAveragePrecision(box_format="xyxy", iou_type="bbox"), "top_box": TopBoxIoU()},
        compute_groups=False,
    )


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy, macro F1, per-class F1 and the confusion matrix; cloned per split."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "f1_per_class": MulticlassF1Score(num_classes, average=None),
            "confmat": MulticlassConfusionMatrix(num_classes),
        }
    )


def detection_outcomes(batches: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The detector's predictions as a two-class problem: log P(missed), log P(found) from the top box's score,
    and whether it was found (IoU with the true box at least ``DETECTION_IOU``, as the detection rate counts)."""
    scores, found = [], []
    for batch in batches:
        for box, score, truth in zip(batch["boxes"], batch["scores"], batch["true_boxes"], strict=True):
            scores.append(float(score))
            found.append(int(float(box_iou(box[None].cpu(), truth[:1].cpu())[0, 0]) >= DETECTION_IOU))
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.stack([np.log1p(-p), np.log(p)], axis=-1).reshape(-1, 2), np.asarray(found, dtype=np.int64)
