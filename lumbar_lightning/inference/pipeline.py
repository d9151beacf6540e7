"""The three-stage ``Pipeline`` of the paper: detect the canal, classify rootlet/cord, grade the rootlet patches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumbar_lightning.data.grading import SCHIZAS
from lumbar_lightning.data.labels import LEVEL_INDEX
from lumbar_lightning.data.series import canal_brightness, reference_slices
from lumbar_lightning.data.transforms import PatchGeometry, resize_image, scale_boxes
from lumbar_lightning.inference.box_choice import SeriesBoxChoice
from lumbar_lightning.models.predictors import CanalBoxPredictor, PatchPredictor


@dataclass
class Prediction:
    """What the pipeline says about one image; boxes are in the stored image's pixels."""

    box: np.ndarray
    box_score: float
    rootlet_prob: float
    level: str
    grade_probs: np.ndarray  # prior-corrected if the grader is configured so
    grade_probs_balanced: np.ndarray  # without prior correction
    grade: str  # empty where the level is cord
    fold_agreement: float = 1.0  # share of a fold ensemble's members whose own call is this level and grade
    classes: tuple[str, ...] = SCHIZAS.classes  # the grader's classes, in the order of grade_probs

    @property
    def confidence(self) -> float:
        """How sure the pipeline is of what it says: the level's probability, and on rootlet slices the lower of
        that and the grade's (calibrated where the run fitted a temperature)."""
        level = max(self.rootlet_prob, 1.0 - self.rootlet_prob)
        return min(level, float(np.max(self.grade_probs))) if self.grade else level

    @classmethod
    def decide(
        cls,
        box: np.ndarray,
        box_score: float,
        rootlet_prob: float,
        grade_probs: np.ndarray,
        grade_probs_balanced: np.ndarray,
        classes: tuple[str, ...] = SCHIZAS.classes,
    ) -> Prediction:
        """The level (rootlet at probability >= 0.5) and, on rootlet slices only, the most probable grade."""
        level = "rootlet" if rootlet_prob >= 0.5 else "cord"
        grade = classes[int(np.argmax(grade_probs))] if level == "rootlet" else ""
        return cls(
            np.asarray(box),
            float(box_score),
            float(rootlet_prob),
            level,
            grade_probs,
            grade_probs_balanced,
            grade,
            classes=tuple(classes),
        )

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            **{
                f"pred_{k}": round(float(v), 2)
                for k, v in zip(("x_min", "y_min", "x_max", "y_max"), self.box, strict=True)
            },
            "box_score": round(self.box_score, 4),
            "rootlet_prob": round(self.rootlet_prob, 4),
            "pred_level": self.level,
        }
        for g, p, q in zip(self.classes, self.grade_probs, self.grade_probs_balanced, strict=True):
            row[f"p_{g}"] = round(float(p), 4)
            row[f"p_{g}_balanced"] = round(float(q), 4)
        row["pred_grade"] = self.grade
        row["pred_grade_balanced"] = (
            self.classes[int(np.argmax(self.grade_probs_balanced))] if self.grade else ""
        )
        row["confidence"] = round(self.confidence, 4)
        row["fold_agreement"] = round(self.fold_agreement, 4)
        return row


#: The shifted grade readings' directions (x, y) in units of ``grade_shift_tta_mm``: left, right, up, down.
SHIFT_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))


class Pipeline:
    """Detector, then rootlet classifier on the detected patch, then grader on the patches called rootlet.

    Without a rootlet classifier (``stages=[detector, grade]``: a data set with no level labels) every slice is
    read at rootlet level and graded.

    ``box_choice``: which of the detector's candidates a slice keeps (``SeriesBoxChoice``); None keeps the top box.

    ``grade_shift_tta_mm`` > 0 grades each detected box as the mean of five readings: the grade patch as detected
    and moved this many millimetres left, right, up and down. A detected box sits a millimetre or two off the
    rater's, and on a severe canal that alone can move the call by a grade (``experiments/cohorts``). Boxes given
    to ``predict`` are read once, as given. 0: one reading.

    Images go in as full-size normalised arrays (the ingestion cache's format); everything runs in batches.
    The stages are plain-torch predictors (a trained LightningModule's ``predictor``, or one rebuilt from a
    checkpoint by ``load_fold_pipeline``), so serving a run imports no Lightning.
    """

    def __init__(
        self,
        detector: CanalBoxPredictor,
        rootlet: PatchPredictor | None,
        grade: PatchPredictor,
        patch: PatchGeometry,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        grade_patch: PatchGeometry | None = None,
        box_choice: SeriesBoxChoice | None = None,
        grade_shift_tta_mm: float = 0.0,
    ) -> None:
        self.detector = detector.eval().to(device)
        self.rootlet = rootlet.eval().to(device) if rootlet is not None else None
        self.grade = grade.eval().to(device)
        self.patch = patch
        self.grade_patch = grade_patch or patch  # the grader may look at its own patch size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.box_choice = box_choice
        self.grade_shift_tta_mm = grade_shift_tta_mm

    @property
    def grade_shift_tta_mm(self) -> float:
        return self._grade_shift_tta_mm

    @grade_shift_tta_mm.setter
    def grade_shift_tta_mm(self, mm: float) -> None:
        """The one check of the value, however it is set (built, or changed by ``Serving``)."""
        if not mm >= 0:
            raise ValueError(f"grade_shift_tta_mm must be >= 0 (0: one reading); got {mm}")
        self._grade_shift_tta_mm = float(mm)

    @property
    def geometries(self) -> tuple[PatchGeometry, ...]:
        """How its patches are cut (level, grade): what ``require_pixel_spacing`` checks an input against."""
        return self.patch, self.grade_patch

    @torch.no_grad()
    def detect(
        self,
        images: Sequence[np.ndarray],
        pixel_mm: Sequence[float] | None = None,
        series: Sequence[Any] | None = None,
        position: Sequence[float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A canal box per image (stored-image pixels) and its calibrated score: the top-scoring candidate, or
        the one ``box_choice`` keeps. Where the detector has none, a box scored 0: with ``box_choice``, the median
        of the series neighbours' confident boxes if there are any, else a centred box."""
        size = self.detector.image_size
        boxes, scores = [], []  # every candidate of every image, in stored-image pixels, with its raw score
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            inputs = [torch.from_numpy(resize_image(im, size))[None].to(self.device) for im in chunk]
            for im, out in zip(chunk, self.detector.candidates(inputs), strict=True):
                boxes.append(
                    scale_boxes(out["boxes"].cpu().numpy().reshape(-1, 4), (size, size), im.shape[:2])
                )
                scores.append(out["scores"].cpu())
        stand_in: list[np.ndarray | None] = [None] * len(images)
        if self.box_choice is None:
            keep = np.array([int(torch.argmax(s)) if len(s) else -1 for s in scores])
        else:
            centres = [(b[:, :2] + b[:, 2:]) / 2 for b in boxes]
            raw = [s.numpy() for s in scores]
            keep = self.box_choice.choose(raw, centres, series, position, pixel_mm)
            if (keep < 0).any():
                stand_in = self.box_choice.stand_in(keep, raw, boxes, series, position)
        centred = self.detector.centred_box().numpy()
        kept_boxes = [
            b[k] if k >= 0 else (sub if sub is not None else scale_boxes(centred, (size, size), im.shape[:2]))
            for im, b, k, sub in zip(images, boxes, keep, stand_in, strict=True)
        ]
        kept_scores = torch.stack(
            [s[k] if k >= 0 else torch.tensor(0.0) for s, k in zip(scores, keep, strict=True)]
        )
        return np.stack(kept_boxes), self.detector.calibrated(kept_scores).numpy()

    @torch.no_grad()
    def classify(
        self,
        images: Sequence[np.ndarray],
        boxes: np.ndarray,
        pixel_mm: Sequence[float] | None = None,
        series: Sequence[Any] | None = None,
        grade_shift_tta_mm: float = 0.0,
    ) -> dict[str, np.ndarray]:
        """Rootlet probability and grade probabilities (corrected and balanced) for each image's box.

        A grader with ``series_reference`` also sees each slice's series reference (``reference_slices`` on the
        patches' ``canal_brightness`` and the rootlet calls); ``series`` groups the images (default: one series).
        ``grade_shift_tta_mm`` > 0: the grade is the mean of the reading at each box and at the box moved this far
        (mm) left, right, up and down; the series reference moves with it.
        """
        spacing = list(pixel_mm) if pixel_mm is not None else [None] * len(images)

        def cut(
            geometry: PatchGeometry,
            which: Sequence[int] | None = None,
            scale: np.ndarray | None = None,
            boxes: np.ndarray = boxes,
        ) -> torch.Tensor:
            which = range(len(images)) if which is None else which
            patches = [
                geometry.crop(
                    images[j], boxes[j], 1.0, spacing[j], scale_box=None if scale is None else scale[i]
                )
                for i, j in enumerate(which)
            ]
            return torch.from_numpy(np.stack(patches))[:, None].to(self.device)

        level_in = cut(self.patch)
        if self.rootlet is None:  # no level stage: every slice is graded
            rootlet = np.ones(len(images), dtype=np.float32)
        else:
            rootlet = (
                torch.cat(
                    [
                        self.rootlet.predict_step({"image": level_in[s : s + self.batch_size]})["probs"]
                        for s in range(0, len(level_in), self.batch_size)
                    ]
                )[:, LEVEL_INDEX["rootlet"]]
                .cpu()
                .numpy()
            )
        groups = np.zeros(len(images)) if series is None else np.asarray(series)

        def grade(shifted: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
            """Corrected and balanced grade probabilities with every box moved by ``shifted`` (pixels)."""
            if shifted is None:
                grade_in = level_in if self.grade_patch == self.patch else cut(self.grade_patch)
                at = boxes
            else:
                at = boxes + np.concatenate([shifted, shifted], axis=1)
                grade_in = cut(self.grade_patch, boxes=at)
            if self.grade.series_reference:
                refs = reference_slices(
                    groups, canal_brightness(grade_in[:, 0].cpu().numpy()), rootlet >= 0.5
                )
                grade_in = torch.cat([grade_in, cut(self.grade_patch, refs, scale=boxes, boxes=at)], dim=1)
            corrected, balanced = [], []
            for start in range(0, len(grade_in), self.batch_size):
                probs = self.grade.predict_step({"image": grade_in[start : start + self.batch_size]})
                corrected.append(probs["probs"])
                balanced.append(probs["probs_balanced"])
            return torch.cat(corrected), torch.cat(balanced)

        if grade_shift_tta_mm > 0:
            if any(mm is None or not np.isfinite(mm) for mm in spacing):
                raise ValueError(
                    "a shifted grade reading (grade_shift_tta_mm) needs every image's pixel spacing"
                )
            per_pixel = grade_shift_tta_mm / np.asarray(spacing, dtype=np.float32)[:, None]
            readings = [grade(None)] + [
                grade(per_pixel * np.array([step], dtype=np.float32)) for step in SHIFT_STEPS
            ]
            corrected = torch.stack([r[0] for r in readings]).mean(0)
            balanced = torch.stack([r[1] for r in readings]).mean(0)
        else:
            corrected, balanced = grade(None)
        return {
            "rootlet_prob": rootlet,
            "grade_probs": corrected.cpu().numpy(),
            "grade_probs_balanced": balanced.cpu().numpy(),
        }

    def predict(
        self,
        images: Sequence[np.ndarray],
        boxes: np.ndarray | None = None,
        pixel_mm: Sequence[float] | None = None,
        series: Sequence[Any] | None = None,
        position: Sequence[float] | None = None,
        detections: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[Prediction]:
        """Chained predictions; pass ``boxes`` to classify given boxes instead of detected ones.

        ``pixel_mm`` (the images' pixel spacing) is needed when patches are cut at a fixed size in millimetres
        and for the series box choice; ``series`` (a series id per image) when the images come from several
        series (the grader's series reference, the box choice); ``position`` orders each series' slices for
        the box choice (default: as given). ``detections``: what ``detect`` gave for these images with this
        detector (boxes, scores), read as detected boxes without detecting again.
        """
        if not len(images):
            return []
        detected = boxes is None
        if detected:
            boxes, scores = detections or self.detect(images, pixel_mm, series, position)
        else:
            scores = np.ones(len(images), dtype=np.float32)
        shift = self.grade_shift_tta_mm if detected else 0.0  # a given box is read as given
        out = self.classify(images, np.asarray(boxes, dtype=np.float32), pixel_mm, series, shift)
        return [
            Prediction.decide(
                boxes[i],
                scores[i],
                out["rootlet_prob"][i],
                out["grade_probs"][i],
                out["grade_probs_balanced"][i],
                self.grade.class_names or SCHIZAS.classes,
            )
            for i in range(len(images))
        ]


def load_stage_weights(module: torch.nn.Module, checkpoint: str | Path) -> torch.nn.Module:
    """Load a Lightning checkpoint's weights safely (``weights_only=True``), naming the file if it does not fit.

    A predictor takes the checkpoint's serving state only (its network and prior; training state such as the
    tracked best stays behind); a LightningModule takes all of it. Either way a missing or misshapen tensor fails.
    """
    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    weights = state.get("state_dict", state)
    if isinstance(module, (CanalBoxPredictor, PatchPredictor)):
        serving = module.state_dict().keys()
        weights = {k: v for k, v in weights.items() if k in serving}
    if "temperature" in module.state_dict() and "temperature" not in weights:
        weights = {
            **weights,
            "temperature": torch.ones(()),
        }  # a checkpoint from before calibration: uncalibrated
    try:
        module.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(
            f"checkpoint {checkpoint} does not fit the configured {type(module).__name__} ({first}); "
            "was it trained with another model config?"
        ) from None
    return module
