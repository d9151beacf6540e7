"""One fold for one rater: train and test the three stages, then run the chained pipeline on the test set.

``lumbar-train`` runs one ``run_fold``; ``lumbar-cv`` runs it for every fold and rater into one run folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.data.datamodules import load_dataset
from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.grading import activate_from
from lumbar_lightning.data.transforms import PatchGeometry
from lumbar_lightning.engine.detector_sharing import detector_rater, shared_detections
from lumbar_lightning.evaluation.calibration import calibration_report
from lumbar_lightning.evaluation.chained import record_chained
from lumbar_lightning.inference.box_choice import SeriesBoxChoice
from lumbar_lightning.inference.labelled import baseline_grades, predict_test_images
from lumbar_lightning.inference.pipeline import Pipeline, load_stage_weights
from lumbar_lightning.io import atomic_copy, atomic_write, atomic_write_text
from lumbar_lightning.layout import FoldLayout
from lumbar_lightning.models.stages import (
    CanalDetector,
    GradeClassifier,
    PatchClassifier,
    RootletClassifier,
    StageModule,
)
from lumbar_lightning.numerics import fingerprint
from lumbar_lightning.tracking.wandb import (
    finish_active_run,
    log_confusion,
    log_pipeline_run,
    run_config,
    wandb_settings,
)

log = logging.getLogger("lumbar_lightning")
STAGES = ("detector", "rootlet", "grade")


def prepare_data(cfg: DictConfig) -> LumbarDataset:
    """Ingest ``data.data_dir``; the default location gets the phantom cohort generated on first use."""
    data_dir = Path(cfg.data.data_dir)
    if data_dir.resolve() == Path(cfg.paths.data_dir).resolve() and not (data_dir / "labels.csv").exists():
        from lumbar_lightning.data.phantom.families import ensure_phantom, phantom_config

        ensure_phantom(data_dir, phantom_config(cfg))
    return load_dataset(data_dir, cfg.data.get("cache_dir"), cfg.data.pseudonym_salt)


def shared_data_arguments(cfg: DictConfig, fold: int, rater: str) -> dict[str, Any]:
    """What every stage's datamodule takes from ``data`` (the data set, its split, loaders, augmentation) and the
    run (fold, rater, seed); the stage's own arguments are in its ``model.<stage>.datamodule`` node."""
    d = cfg.data
    return {
        "data_dir": d.data_dir,
        "cache_dir": d.get("cache_dir"),
        "pseudonym_salt": d.pseudonym_salt,
        "rater": rater,
        "fold": fold,
        "num_folds": d.num_folds,
        "split_seed": d.split_seed,
        "eval_batch_size": d.eval_batch_size,
        "num_workers": d.num_workers,
        "augment": hydra.utils.instantiate(d.augment) if d.get("augment") is not None else None,
        "seed": cfg.seed,
        "consensus": hydra.utils.instantiate(d.consensus) if d.get("consensus") is not None else None,
    }


def _trainer(
    cfg: DictConfig,
    stage: str,
    stage_cfg: DictConfig,
    out_dir: Path,
    monitor: str,
    run_name: str,
    tracking_dir: Path,
) -> tuple[L.Trainer, L.Trainer]:
    """The fit and test Trainers of one stage, sharing loggers.

    Fit: the configured trainer (one or N processes), the stage's epochs, best/last checkpoints on ``monitor``,
    the run's callbacks and the stage's own (``model.<stage>.callbacks``, e.g. weight averaging for one stage).
    Test: one process on the same accelerator, so test metrics are computed once, in this process, on every
    test image (a distributed sampler would pad the test set with repeats).
    """
    layout = FoldLayout(out_dir)
    # The stage's own values for the fields a callback config leaves as ??? (the checkpoint folder, the metric).
    runtime = {"dirpath": str(layout.stage_dir(stage)), "monitor": monitor}
    callbacks = [
        hydra.utils.instantiate(
            cb_cfg,
            **{k: v for k, v in runtime.items() if OmegaConf.is_missing(cb_cfg, k)},
        )
        for cb_cfg in [*(cfg.get("callbacks") or {}).values(), *(stage_cfg.get("callbacks") or {}).values()]
        if cb_cfg is not None and "_target_" in cb_cfg
    ]
    loggers: list[Any] = []
    for lg_cfg in (cfg.get("logger") or {}).values():
        if lg_cfg is not None and "_target_" in lg_cfg:
            # W&B runs of a whole CV share one folder (``tracking_dir``); file loggers stay with their fold.
            save_dir = tracking_dir if "Wandb" in lg_cfg._target_ else layout.logs
            # W&B reads the git commit from its folder, and warns "git root ... does not exist" when it is missing
            save_dir.mkdir(parents=True, exist_ok=True)
            # _convert_="all": plain dicts (W&B ignores a DictConfig ``settings``)
            loggers.append(
                hydra.utils.instantiate(lg_cfg, save_dir=str(save_dir), name=run_name, _convert_="all")
            )
    # trainer: (cpu, gpu, ddp, ...), then the stage's own entries (epochs), then debug=...'s
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    node.update(OmegaConf.to_container(stage_cfg.trainer, resolve=True) if stage_cfg.get("trainer") else {})
    if cfg.get("debug_trainer"):
        node.update(OmegaConf.to_container(cfg.debug_trainer, resolve=True))
    extra: dict[str, Any] = {}
    # debug=profiler: one report folder per stage, one profiler shared by fit and test
    if isinstance(node.get("profiler"), dict):
        extra["profiler"] = hydra.utils.instantiate(node.pop("profiler"), dirpath=str(layout.profiles(stage)))
    for lg in loggers:  # the whole run config and environment, not only the module's hyperparameters
        lg.log_hyperparams({"run": run_config(cfg), "stage": stage, "environment": fingerprint()})
    common = {"logger": loggers or False, "default_root_dir": str(out_dir), **extra}
    fit = hydra.utils.instantiate(node, callbacks=callbacks, **common)
    test_node = {
        k: v for k, v in node.items() if k not in ("devices", "strategy", "sync_batchnorm", "num_nodes")
    }
    test = hydra.utils.instantiate(test_node, devices=1, **common)
    return fit, test


def _fit_stage(
    cfg: DictConfig,
    stage: str,
    module: StageModule,
    datamodule: L.LightningDataModule,
    out_dir: Path,
    run_name: str,
    tracking_dir: Path,
) -> dict[str, Any]:
    """Fit, reload the best checkpoint (weights only), test it on the rater's own boxes. ``best.ckpt`` is the best
    validation epoch's, or with ``model.<stage>.checkpoint=last_epoch`` a copy of the final epoch's.

    Resumable: a stage that finished before (``done.json``) is reloaded, not retrained; one that was cut off
    continues from its ``last.ckpt`` (model, optimiser, scheduler, RNG and epoch) to the same result.
    """
    layout = FoldLayout(out_dir)
    if layout.done(stage).exists() and layout.best(stage).exists():
        load_stage_weights(module, layout.best(stage))
        log.info(f"{run_name}: finished in an earlier run, reloaded")
        return json.loads(layout.done(stage).read_text())
    resume = layout.last(stage) if layout.last(stage).exists() else None
    if resume is not None:
        try:
            torch.load(resume, map_location="cpu", weights_only=True)
        except Exception as exc:  # cut off while being written: start the stage again
            log.warning(f"{run_name}: {resume} is unreadable ({type(exc).__name__}); the stage starts again")
            resume = None
        else:
            log.info(f"{run_name}: resuming from {resume}")
    stage_cfg = cfg.model[stage]
    last_epoch = _tests_last_epoch(stage_cfg, stage)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer, tester = _trainer(cfg, stage, stage_cfg, out_dir, module.monitor, run_name, tracking_dir)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    fit_seconds = time.perf_counter() - start
    # Under ddp_spawn the fit ran in other processes, and a fit resumed from a last.ckpt of its final epoch logs
    # nothing: the best validation value is read from the checkpoint, never from in-process state.
    best_val, epochs = _checkpoint_progress(layout.last(stage))
    if last_epoch and layout.last(stage).exists():
        atomic_copy(layout.last(stage), layout.best(stage))
    elif last_epoch:  # callbacks.last_checkpoint removed, or a fast_dev_run that saves nothing
        log.warning(
            f"{run_name}: checkpoint=last_epoch but no {layout.last(stage)}; testing best.ckpt if any"
        )
    if layout.best(stage).exists():
        load_stage_weights(module, layout.best(stage))
    _reload_csv_columns(tester)
    module.set_temperature(1.0)  # a rerun after a cut-off may have reloaded an already calibrated checkpoint
    best_val_metrics: dict[str, float] = {}
    module.keep_outcomes()  # the passes below give calibration its inputs too
    if isinstance(module, PatchClassifier):  # validation F1 at the chosen checkpoint: what sweeps optimise
        best_val_metrics = epoch_metrics(tester.validate(module, datamodule=datamodule, verbose=False))
    metrics: dict[str, Any] = epoch_metrics(tester.test(module, datamodule=datamodule, verbose=False))
    if isinstance(module, PatchClassifier):
        metrics["test/confmat"] = module.confusion_matrix("test")
    metrics["calibration"] = calibrate(tester, module, datamodule, layout.best(stage))
    module.keep_outcomes(False)
    metrics.update(best_val_metrics)
    metrics["best_val"] = best_val
    metrics["epochs"] = epochs
    metrics["fit_seconds"] = round(fit_seconds, 2)
    if wandb_settings(cfg) is not None and "test/confmat" in metrics:
        log_confusion(
            tester, metrics["test/confmat"], list(module.class_names), f"{run_name} test (rater boxes)"
        )
    finish_active_run()
    layout.stage_dir(stage).mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.done(stage), json.dumps(metrics, default=float))
    return metrics


#: What ``model.<stage>.checkpoint`` may say ``best.ckpt`` (the tested and served weights) holds.
CHECKPOINT_CHOICES = ("best_val", "last_epoch")


def _tests_last_epoch(stage_cfg: DictConfig, stage: str) -> bool:
    """Whether the stage tests its final weights (``last_epoch``) rather than its best validation epoch
    (``best_val``, the paper's). With a learning rate annealed to zero, the final weights are the converged ones,
    and a choice by a few validation patients' accuracy adds that split's noise to the test figures."""
    choice = stage_cfg.get("checkpoint", "best_val")
    if choice not in CHECKPOINT_CHOICES:
        raise ValueError(
            f"model.{stage}.checkpoint={choice!r}: expected one of {', '.join(CHECKPOINT_CHOICES)}"
        )
    return choice == "last_epoch"


def calibrate(
    tester: L.Trainer, module: StageModule, datamodule: L.LightningDataModule, checkpoint: Path
) -> dict[str, Any]:
    """Temperature scaling: fitted on the validation split, ECE and reliability bins before and after on the test
    split. The temperature goes into ``checkpoint`` (the stage's best), so the fold's chained pipeline,
    ``lumbar-predict`` and ``lumbar-evaluate`` all report calibrated probabilities. A stage's ``outcomes`` come
    from the validation and test passes just run (``keep_outcomes``) when they covered the whole split; otherwise
    (the detector's validation split, a ``limit_*_batches``) the split is predicted again. For the detector the
    probability is its top box's score, read as P(canal found), against whether that box is a detection."""
    module.set_temperature(1.0)  # a rerun after a cut-off may have reloaded an already calibrated checkpoint

    def outputs(split: str, loader: Any) -> tuple[np.ndarray, np.ndarray]:
        kept = module.kept_outcomes(split)
        if kept is not None and len(kept[1]) == len(loader.dataset):  # the whole split, read at temperature 1
            return kept
        return module.outcomes(tester.predict(module, dataloaders=loader) or [])

    report = calibration_report(
        *outputs("val", datamodule.val_dataloader()), *outputs("test", datamodule.test_dataloader())
    )
    module.set_temperature(report["temperature"])
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state["state_dict"]["temperature"] = module.temperature.detach().cpu().clone()
        atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))
    return report


def epoch_metrics(logged: list[dict[str, float]]) -> dict[str, float]:
    """A stage's epoch metrics from what ``Trainer.validate``/``test`` return (the logged values), without the
    running loss and the tracked best, which belong to training."""
    values = logged[0] if logged else {}
    return {k: float(v) for k, v in values.items() if not k.endswith(("/loss", "_best"))}


def _reload_csv_columns(trainer: L.Trainer) -> None:
    """After a spawned fit, a CSVLogger in this process has not seen the columns its file gained in the workers
    (and would fail to append); read them back from the file's header."""
    from lightning.pytorch.loggers import CSVLogger

    for lg in trainer.loggers:
        if isinstance(lg, CSVLogger) and Path(lg.experiment.metrics_file_path).exists():
            with open(lg.experiment.metrics_file_path, newline="") as fh:
                header = next(csv.reader(fh), [])
            lg.experiment.metrics_keys = sorted(set(lg.experiment.metrics_keys) | set(header))


def _checkpoint_progress(path: Path) -> tuple[float, int]:
    """The tracked best validation value (``val_best``, persistent in the module's state) and the epochs trained,
    as the last checkpoint records them (NaN and 0 when there is none, e.g. fast_dev_run)."""
    if not path.exists():
        return float("nan"), 0
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # under weight averaging (EMAWeightAveraging) the state_dict holds the average; the trained module's own
    # state, with its tracked best, is current_model_state
    best = ckpt.get("current_model_state", ckpt["state_dict"]).get("val_best.max_value")
    return (float("nan") if best is None else float(best)), int(ckpt.get("epoch", -1)) + 1


def patch_datamodule(
    cfg: DictConfig, stage: str, fold: int, rater: str, series_reference: bool = False
) -> L.LightningDataModule:
    """The data of a patch stage (rootlet, grade, baseline) for one fold and rater, built by Hydra from
    ``model.<stage>.datamodule`` (its class, batches, sampling) with ``data``'s shared arguments and the stage's
    patch geometry."""
    return hydra.utils.instantiate(
        cfg.model[stage].datamodule,
        patch=stage_geometry(cfg, stage),
        series_reference=series_reference,
        **shared_data_arguments(cfg, fold, rater),
    )


def detector_datamodule(cfg: DictConfig, fold: int, rater: str, image_size: int) -> L.LightningDataModule:
    """The detector's slices for one fold (``rater``'s boxes, or the consensus), from ``model.detector.datamodule``."""
    return hydra.utils.instantiate(
        cfg.model.detector.datamodule, image_size=image_size, **shared_data_arguments(cfg, fold, rater)
    )


def stage_geometry(cfg: DictConfig, stage: str) -> PatchGeometry:
    """``data.patch``, with the stage's own ``model.<stage>.patch`` entries on top (e.g. a larger grade patch)."""
    values = OmegaConf.to_container(cfg.data.patch, resolve=True)
    own = cfg.model[stage].get("patch")
    if own is not None:
        values.update({k: v for k, v in OmegaConf.to_container(own, resolve=True).items() if v is not None})
    return PatchGeometry(**values)


def baseline_enabled(cfg: DictConfig) -> bool:
    """Whether each fold also trains the baseline CNN (``model.baseline``) on the rater's boxes (``baseline=``)."""
    return bool(cfg.get("baseline", False)) and cfg.model.get("baseline") is not None


def run_stages(cfg: DictConfig) -> tuple[str, ...]:
    """The pipeline's stages in order (``stages=``): all three, or ``[detector, grade]`` for a data set without
    rootlet/cord labels (every slice is then graded)."""
    wanted = [str(s) for s in (cfg.get("stages") or STAGES)]
    if unknown := sorted(set(wanted) - set(STAGES)):
        raise DataContractError(f"stages: unknown stage(s) {unknown}; known: {list(STAGES)}")
    if "detector" not in wanted or "grade" not in wanted:
        raise DataContractError(f"stages={wanted}: the pipeline needs at least the detector and the grade")
    return tuple(s for s in STAGES if s in wanted)


def build_modules(cfg: DictConfig) -> dict[str, StageModule]:
    """The stages' LightningModules from their configs (``model.<stage>.module``), then the baseline's if enabled
    (built last, so the three stages' initial weights do not depend on whether it is)."""
    stages = (*run_stages(cfg), "baseline") if baseline_enabled(cfg) else run_stages(cfg)
    # _convert_="all": plain lists and dicts in hyperparameters, so checkpoints load with weights_only=True.
    return {stage: hydra.utils.instantiate(cfg.model[stage].module, _convert_="all") for stage in stages}


def run_fold(
    cfg: DictConfig, fold: int, rater: str, out_dir: Path, tracking_dir: Path | None = None
) -> dict[str, Any]:
    """Everything for one fold and one rater; writes checkpoints, folds.csv, predictions.csv, metrics.json.

    W&B runs go to ``tracking_dir`` (default: the fold's ``logs/``).
    """
    out_dir = Path(out_dir)
    layout = FoldLayout(out_dir)
    tracking_dir = Path(tracking_dir) if tracking_dir else layout.logs
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cfg = OmegaConf.merge(cfg, {"data": {"rater": rater, "fold": fold}})  # what loggers record is this run
    activate_from(cfg)  # a fold in a worker process grades in the run's scheme too
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    dataset = prepare_data(cfg)
    folds = dataset.folds(cfg.data.num_folds, cfg.data.split_seed)
    folds.to_csv(layout.folds)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    modules = build_modules(cfg)
    for stage in modules:  # a misspelt checkpoint choice fails here, before any stage trains
        _tests_last_epoch(cfg.model[stage], stage)
    detector: CanalDetector = modules["detector"]  # type: ignore[assignment]
    rootlet: RootletClassifier | None = modules.get("rootlet")  # type: ignore[assignment]
    grader: GradeClassifier = modules["grade"]  # type: ignore[assignment]
    patch_stages = [s for s in modules if s != "detector"]  # rootlet, grade and the baseline if enabled
    geometry = {stage: stage_geometry(cfg, stage) for stage in patch_stages}
    box_choice = detector_box_choice(cfg)
    write_pipeline_spec(out_dir, cfg, {s: modules[s] for s in STAGES if s in modules}, geometry, box_choice)

    metrics: dict[str, Any] = {"fold": fold, "rater": rater}
    box_rater = detector_rater(cfg, rater)
    det_dm = detector_datamodule(cfg, fold, box_rater, detector.image_size)
    det_dm.setup()
    metrics["splits"] = det_dm.describe()
    metrics["detector"] = _fit_stage(
        cfg, "detector", detector, det_dm, out_dir, f"{box_rater}-detector-fold{fold}", tracking_dir
    )
    metrics["detector"]["boxes"] = box_rater
    for stage in patch_stages:
        module = modules[stage]
        dm = patch_datamodule(cfg, stage, fold, rater, module.hparams.series_reference)
        dm.setup()
        module.set_class_prior(dm.class_counts("train"))
        if dm.soft_targets(dm.rows["val"]) is not None:
            module.select_by_votes()
        metrics[stage] = {
            "gt_box": _fit_stage(cfg, stage, module, dm, out_dir, f"{rater}-{stage}-fold{fold}", tracking_dir)
        }

    pipeline = Pipeline(
        detector.eval().predictor,
        rootlet.eval().predictor if rootlet is not None else None,
        grader.eval().predictor,
        geometry.get("rootlet", geometry["grade"]),
        batch_size=cfg.data.eval_batch_size,
        grade_patch=geometry["grade"],
        box_choice=box_choice,
        grade_shift_tta_mm=grade_shift_tta_mm(cfg),
    )
    predictions = predict_test_images(
        pipeline,
        dataset,
        det_dm.rows["test"]["patient"].unique(),
        fold,
        rater,
        detections=shared_detections(cfg, layout.best("detector")),
    )
    if "baseline" in modules:
        predictions["baseline_grade"] = baseline_grades(
            modules["baseline"],
            dataset,
            predictions["sop_instance_uid"],
            rater,
            geometry["baseline"],  # type: ignore[arg-type]
            cfg.data.eval_batch_size,
        )
    atomic_write_text(layout.predictions, predictions.to_csv(index=False))
    record_chained(metrics, predictions, rater)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    metrics["environment"] = fingerprint()  # what the numbers depend on (make reproduce compares it)
    log_pipeline_run(cfg, f"{rater}-pipeline-fold{fold}", tracking_dir, metrics, predictions)
    atomic_write_text(layout.metrics, json.dumps(metrics, indent=2, default=float))
    return metrics


def detector_box_choice(cfg: DictConfig) -> SeriesBoxChoice | None:
    """Which candidate box each slice keeps (``model.detector.box_choice``, built by Hydra); None: the top one."""
    node = cfg.model.detector.get("box_choice")
    return None if node is None else hydra.utils.instantiate(node)


def grade_shift_tta_mm(cfg: DictConfig) -> float:
    """How far (mm) the grader's four extra readings of a detected box move its patch (``model.grade.shift_tta_mm``;
    0: one reading)."""
    return float(cfg.model.grade.get("shift_tta_mm") or 0.0)


def write_pipeline_spec(
    out_dir: Path,
    cfg: DictConfig,
    modules: dict[str, StageModule],
    geometry: dict[str, PatchGeometry],
    box_choice: SeriesBoxChoice | None = None,
) -> None:
    """What ``lumbar-predict`` needs besides the checkpoints, as plain data (nothing in it is ever executed):
    each stage's class and hyperparameters, the patch geometry, the box choice, the grader's shifted readings,
    and the whole run config as plain YAML."""
    spec = {
        "stages": {s: {"class": type(m).__name__, "hparams": dict(m.hparams)} for s, m in modules.items()},
        "geometry": {s: dataclasses.asdict(g) for s, g in geometry.items()},
        "box_choice": None if box_choice is None else box_choice.as_dict(),
        "grade_shift_tta_mm": grade_shift_tta_mm(cfg),
        "batch_size": int(cfg.data.eval_batch_size),
        "rater": str(cfg.data.rater),
        "fold": int(cfg.data.fold),
    }
    layout = FoldLayout(out_dir)
    atomic_write_text(layout.pipeline, json.dumps(spec, indent=2, default=str))
    atomic_write_text(layout.config, OmegaConf.to_yaml(cfg, resolve=True))
