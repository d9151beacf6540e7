"""The chained pipeline over a data set's labelled images: what a fold's test set and an external cohort share."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from lumbar_lightning.data.datamodules import BOX
from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.labels import CONSENSUS
from lumbar_lightning.data.transforms import PatchGeometry, require_pixel_spacing
from lumbar_lightning.inference.pipeline import Pipeline
from lumbar_lightning.models.stages import GradeClassifier


def predict_test_images(
    pipeline: Pipeline,
    dataset: LumbarDataset,
    patients: np.ndarray,
    fold: int | str,
    rater: str,
    gt_boxes: bool = True,
    detections: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] | None = None,
) -> pd.DataFrame:
    """One row per labelled image of the test patients: every rater's labels, the chained prediction, and (with
    ``gt_boxes``) the prediction on the training rater's own box (the ground-truth-box path).

    ``detections`` remembers the detector's boxes and scores for these images (keyed by their SOPInstanceUIDs):
    filled here, and read instead of detecting again. Only for calls with one and the same detector and box
    choice (a fold's raters share its consensus detector)."""
    images = dataset.images.set_index("sop_instance_uid")
    tables = [dataset.labels] + ([dataset.truth] if dataset.truth is not None else [])
    labels = pd.concat([t.rows for t in tables])
    uids = sorted(set(labels["sop_instance_uid"]) & set(images.index[images["patient"].isin(patients)]))
    frame = pd.DataFrame({"sop_instance_uid": uids})
    frame["patient"] = frame["sop_instance_uid"].map(images["patient"])
    frame["fold"] = fold
    frame["trained_on"] = rater
    for who, part in labels.groupby("analyzer"):
        part = part.set_index("sop_instance_uid")
        frame[f"level_{who}"] = frame["sop_instance_uid"].map(part["level"]).fillna("")
        frame[f"grade_{who}"] = frame["sop_instance_uid"].map(part["grade"]).fillna("")
    if rater == CONSENSUS:  # what a consensus classifier learnt from: the raters' majority calls
        own_calls = dataset.labels.for_rater(CONSENSUS)
        for column in ("level", "grade"):
            frame[f"{column}_{CONSENSUS}"] = frame["sop_instance_uid"].map(own_calls[column]).fillna("")
    vertebral = labels.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid")["vertebral_level"]
    frame["vertebral_level"] = frame["sop_instance_uid"].map(vertebral).fillna("")
    require_pixel_spacing(pipeline.geometries, images.loc[uids])  # before any image is graded
    pixels = [dataset.image(uid) for uid in uids]
    spacing = images.loc[uids, "pixel_spacing_col"].astype(float).tolist()
    series = images.loc[uids, "series_instance_uid"].to_numpy()
    position = images.loc[uids, "slice_position"].astype(float).to_numpy()  # slice order, for the box choice
    known: dict[str, Any] = {}
    if detections is not None and uids:
        key = tuple(uids)  # the box choice reads each slice's neighbours: the same images, or detect again
        if key not in detections:
            detections[key] = pipeline.detect(pixels, spacing, series, position)
        known["detections"] = detections[key]
    chained = pd.DataFrame(
        [
            p.as_row()
            for p in pipeline.predict(pixels, pixel_mm=spacing, series=series, position=position, **known)
        ]
    )
    frame = pd.concat([frame, chained], axis=1)
    if not gt_boxes:
        return frame
    own = dataset.labels.for_rater(rater)
    has_box = [uid in own.index for uid in uids]
    if any(has_box):
        idx = [i for i, h in enumerate(has_box) if h]
        boxes = own.loc[[uids[i] for i in idx], ["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32)
        gt = pipeline.predict(
            [pixels[i] for i in idx], boxes=boxes, pixel_mm=[spacing[i] for i in idx], series=series[idx]
        )
        frame["gt_box_level"] = ""
        frame["gt_box_grade"] = ""
        frame.loc[idx, "gt_box_level"] = [p.level for p in gt]
        frame.loc[idx, "gt_box_grade"] = [p.grade for p in gt]
    return frame


@torch.no_grad()
def baseline_grades(
    module: GradeClassifier,
    dataset: LumbarDataset,
    uids: pd.Series,
    rater: str,
    geometry: PatchGeometry,
    batch_size: int = 256,
) -> list[str]:
    """The baseline's grade of each image on ``rater``'s own box, where the rater graded it ("" elsewhere): the
    baseline needs no detector and no level call, which is what makes it the simplest honest comparison."""
    own = dataset.labels.for_rater(rater)
    graded = [uid for uid in uids if uid in own.index and own.at[uid, "grade"] != ""]
    out = dict.fromkeys(uids, "")
    module.eval()
    for start in range(0, len(graded), batch_size):
        part = graded[start : start + batch_size]
        boxes = own.loc[part, BOX].to_numpy(dtype=float)
        patches = np.stack(
            [dataset.patch(uid, tuple(box), geometry, 1.0) for uid, box in zip(part, boxes, strict=True)]
        )
        x = torch.from_numpy(patches).float()[:, None]
        calls = module.class_log_probs(module(x)).argmax(-1).tolist()
        out.update({uid: module.class_names[c] for uid, c in zip(part, calls, strict=True)})
    return [out[uid] for uid in uids]
