"""A finished run's folds as one classifier: each fold's pipeline rebuilt from plain data, and their mean.

Models are rebuilt from a fixed list of classes and the checkpoints' plain hyperparameters, loaded with
``weights_only=True``: nothing from the run folder is imported or executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.grading import SCHIZAS
from lumbar_lightning.data.labels import LEVEL_CLASSES
from lumbar_lightning.data.transforms import PatchGeometry
from lumbar_lightning.inference.box_choice import SeriesBoxChoice
from lumbar_lightning.inference.pipeline import Pipeline, Prediction, load_stage_weights
from lumbar_lightning.layout import FoldLayout, RunLayout
from lumbar_lightning.models.predictors import CanalBoxPredictor, PatchPredictor, build_kwargs

#: The only classes a run folder may name (``models/stages.py``; named, not imported: serving needs no Lightning).
STAGE_CLASSES: dict[str, str] = {
    "detector": "CanalDetector",
    "rootlet": "RootletClassifier",
    "grade": "GradeClassifier",
}


#: Hyperparameters that a checkpoint may legitimately hold differently from the run's record of its config.
_RUNTIME_HPARAMS = {"class_prior", "pretrained"}


def fold_dirs(run_dir: Path, rater: str, fold: int | None) -> list[Path]:
    """A fold folder itself, or the fold folders of a ``lumbar-cv``/``lumbar-train`` run folder for ``rater``."""
    run_dir = Path(run_dir)
    if FoldLayout(run_dir).pipeline.is_file():
        return [run_dir]
    trained = RunLayout(run_dir).folds(rater, having="pipeline")
    trained.sort(key=lambda f: int(f.fold))  # by fold number: the order the ensemble averages in
    dirs = [f.dir for f in trained if fold is None or f.fold == int(fold)]
    if not dirs:
        what = f"fold {fold} of rater {rater}" if fold is not None else f"any fold of rater {rater}"
        raise DataContractError(
            f"{run_dir}: no trained {what} (a fold folder holds pipeline.json and checkpoints/)"
        )
    return dirs


def load_fold_pipeline(
    fold_dir: Path, device: str = "cpu", batch_size: int | None = None, serve: Any = None
) -> Pipeline:
    """The three stages of one trained fold, from ``pipeline.json`` and the best checkpoints; ``serve``
    (``Serving``'s keys) reads them otherwise than the run recorded."""
    layout = FoldLayout(fold_dir)
    spec = json.loads(layout.pipeline.read_text())
    modules: dict[str, CanalBoxPredictor | PatchPredictor] = {}
    for stage, name in STAGE_CLASSES.items():
        if stage == "rootlet" and stage not in spec["stages"]:
            continue  # a run without the level stage (stages=[detector, grade])
        recorded = spec["stages"][stage]
        if recorded["class"] != name:
            raise DataContractError(
                f"{layout.pipeline}: stage {stage} is a {recorded['class']!r}; only {name} is accepted"
            )
        ckpt_path = layout.best(stage)
        if not ckpt_path.is_file():
            raise DataContractError(f"{ckpt_path}: checkpoint missing")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        differ = {
            k: (hparams.get(k), v)
            for k, v in recorded["hparams"].items()
            if k not in _RUNTIME_HPARAMS and _plain(hparams.get(k)) != _plain(v)
        }
        if differ:
            text = ", ".join(f"{k}={a!r} (run config: {b!r})" for k, (a, b) in sorted(differ.items()))
            raise DataContractError(f"{ckpt_path} was trained with another model config: {text}")
        if "pretrained" in hparams:
            hparams["pretrained"] = None  # the weights come from the checkpoint, never from a path it names
        module = _predictor(stage, hparams)
        try:
            load_stage_weights(module, ckpt_path)
        except ValueError as exc:
            raise DataContractError(str(exc)) from None
        modules[stage] = module
    geometry = {s: PatchGeometry(**g) for s, g in spec["geometry"].items()}
    choice = spec.get("box_choice")  # runs recorded before the series box choice keep the top box
    box_choice = SeriesBoxChoice(**choice) if choice else None
    pipeline = Pipeline(
        modules["detector"],
        modules.get("rootlet"),  # type: ignore[arg-type]
        modules["grade"],  # type: ignore[arg-type]
        geometry.get("rootlet", geometry["grade"]),
        batch_size=batch_size or spec["batch_size"],
        device=device,
        grade_patch=geometry["grade"],
        box_choice=box_choice,
        grade_shift_tta_mm=float(spec.get("grade_shift_tta_mm") or 0.0),  # runs before it: one reading
    )
    return Serving.of(serve).apply(pipeline)


@dataclass(frozen=True)
class Serving:
    """How a trained fold is read, where it should differ from what its run recorded (None: as recorded).

    Every setting changes only how trained weights are read, so a finished run can be measured with it without
    training again (``lumbar-evaluate folds=own``): ``flip_tta`` for the rootlet and grade stages (each patch with
    its mirror image), ``box_choice`` False for the detector's top box, True for ``SeriesBoxChoice()``, or a
    mapping of ``SeriesBoxChoice``'s fields, ``grade_shift_tta_mm`` the grader's shifted readings (0: one).
    """

    flip_tta: bool | None = None
    box_choice: bool | dict[str, Any] | None = None
    grade_shift_tta_mm: float | None = None

    @classmethod
    def of(cls, node: Any) -> Serving:
        """From a config node or mapping (``serve:`` in ``evaluate.yaml``); None or empty: as recorded."""
        if isinstance(node, Serving):
            return node
        values = {k: v for k, v in dict(node or {}).items() if v is not None}
        known = ("flip_tta", "box_choice", "grade_shift_tta_mm")
        if unknown := sorted(set(values) - set(known)):
            raise DataContractError(f"serve: unknown setting(s) {unknown}; known: {', '.join(known)}")
        choice = values.get("box_choice")
        if choice is not None and not isinstance(choice, bool):
            choice = {k: v for k, v in dict(choice).items() if k != "_target_"}
        shift = values.get("grade_shift_tta_mm")
        return cls(values.get("flip_tta"), choice, None if shift is None else float(shift))

    def apply(self, pipeline: Pipeline) -> Pipeline:
        if self.flip_tta is not None:
            for stage in (pipeline.rootlet, pipeline.grade):
                if stage is not None:
                    stage.flip_tta = bool(self.flip_tta)
        if self.box_choice is not None:
            if isinstance(self.box_choice, bool):
                pipeline.box_choice = SeriesBoxChoice() if self.box_choice else None
            else:
                pipeline.box_choice = SeriesBoxChoice(**self.box_choice)
        if self.grade_shift_tta_mm is not None:
            try:
                pipeline.grade_shift_tta_mm = self.grade_shift_tta_mm
            except ValueError as exc:
                raise DataContractError(f"serve.{exc}") from None
        return pipeline

    def as_dict(self) -> dict[str, Any]:
        return {
            "flip_tta": self.flip_tta,
            "box_choice": self.box_choice,
            "grade_shift_tta_mm": self.grade_shift_tta_mm,
        }


def _predictor(stage: str, hparams: dict[str, Any]) -> CanalBoxPredictor | PatchPredictor:
    """A stage's predictor, built from its checkpoint's hyperparameters as its LightningModule builds it."""
    if stage == "detector":
        return CanalBoxPredictor.build(**build_kwargs(CanalBoxPredictor.build, hparams))
    grade_classes = hparams.get("classes") or SCHIZAS.classes  # checkpoints before grading schemes: Schizas
    class_names, binary = (LEVEL_CLASSES, True) if stage == "rootlet" else (tuple(grade_classes), False)
    return PatchPredictor.build(class_names, binary, **build_kwargs(PatchPredictor.build, hparams))


def _plain(value: Any) -> Any:
    """Compare hyperparameters as JSON would store them (tuples and lists alike)."""
    return json.loads(json.dumps(value, default=str))


@dataclass
class Ensemble:
    """Several folds' pipelines; boxes and probabilities averaged over them, then level and grade decided."""

    pipelines: list[Pipeline]

    @property
    def geometries(self) -> tuple[PatchGeometry, ...]:
        return tuple(g for p in self.pipelines for g in p.geometries)

    def predict(self, images: list[np.ndarray], pixel_mm: list[float], **kwargs: Any) -> list[Prediction]:
        """``kwargs``: ``Pipeline.predict``'s ``boxes`` and ``series``, passed to every fold."""
        if len(self.pipelines) == 1:
            return self.pipelines[0].predict(images, pixel_mm=pixel_mm, **kwargs)
        per_fold = [p.predict(images, pixel_mm=pixel_mm, **kwargs) for p in self.pipelines]
        out = []
        for preds in zip(*per_fold, strict=True):
            mean = Prediction.decide(
                np.mean([p.box for p in preds], axis=0),
                float(np.mean([p.box_score for p in preds])),
                float(np.mean([p.rootlet_prob for p in preds])),
                np.mean([p.grade_probs for p in preds], axis=0),
                np.mean([p.grade_probs_balanced for p in preds], axis=0),
                preds[0].classes,
            )
            # disagreement across the folds: a second, model-based reason to refer (lumbar-predict's refer)
            mean.fold_agreement = float(
                np.mean([(p.level, p.grade) == (mean.level, mean.grade) for p in preds])
            )
            out.append(mean)
        return out
