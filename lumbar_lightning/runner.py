"""Train and test the three stages for one fold and one rater, then run the chained pipeline on the test set.

``lumbar-train`` runs one ``run_fold``; ``lumbar-cv`` runs it for every fold and rater into one run folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.data.datamodules import BOX, LEVEL_INDEX, PatchDataModule, SliceDataModule, load_dataset
from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.labels import CONSENSUS, GRADES
from lumbar_lightning.data.transforms import PatchGeometry
from lumbar_lightning.engine.numerics import fingerprint
from lumbar_lightning.evaluation.agreement import agreement
from lumbar_lightning.io import atomic_copy, atomic_write_text
from lumbar_lightning.models.stages import (
    CanalDetector,
    GradeClassifier,
    PatchClassifier,
    RootletClassifier,
    StageModule,
)
from lumbar_lightning.pipeline import Pipeline, load_stage_weights
from lumbar_lightning.tracking import confusion_plot, finish_active_run, run_config, wandb_run, wandb_settings

log = logging.getLogger("lumbar_lightning")
STAGES = ("detector", "rootlet", "grade")


def prepare_data(cfg: DictConfig) -> LumbarDataset:
    """Ingest ``data.data_dir``; the default location gets the phantom cohort generated on first use."""
    data_dir = Path(cfg.data.data_dir)
    if data_dir.resolve() == Path(cfg.paths.data_dir).resolve() and not (data_dir / "labels.csv").exists():
        from lumbar_lightning.synth import ensure_phantom, phantom_config

        ensure_phantom(data_dir, phantom_config(cfg))
    return load_dataset(data_dir, cfg.data.get("cache_dir"), cfg.data.pseudonym_salt)


def _data_kwargs(cfg: DictConfig, fold: int, rater: str, stage_cfg: DictConfig) -> dict[str, Any]:
    d = cfg.data
    return {
        "data_dir": d.data_dir,
        "cache_dir": d.get("cache_dir"),
        "pseudonym_salt": d.pseudonym_salt,
        "rater": rater,
        "fold": fold,
        "num_folds": d.num_folds,
        "split_seed": d.split_seed,
        "batch_size": stage_cfg.batch_size,
        "eval_batch_size": d.eval_batch_size,
        "num_workers": d.num_workers,
        "augment": OmegaConf.to_container(d.augment, resolve=True),
        "seed": cfg.seed,
    }


class RngState(L.Callback):
    """Saves the global RNG states (torch, numpy, python) in every checkpoint and restores them on resume, so a
    stage resumed from ``last.ckpt`` draws what an uninterrupted run draws (Faster R-CNN samples its proposals
    from torch's global RNG). Stored as tensors and plain lists: loadable with ``weights_only=True``."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, state, gauss = random.getstate()
        return {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
                "python": [version, list(state), gauss]}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, values, gauss = state["python"]
        random.setstate((version, tuple(values), gauss))


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

    Fit: the configured trainer (one or N processes), the stage's epochs, best/last checkpoints on ``monitor``.
    Test: one process on the same accelerator, so test metrics are computed once, in this process, on every
    test image (a distributed sampler would pad the test set with repeats).
    """
    ckpt_dir = out_dir / "checkpoints" / stage
    callbacks = [
        L.pytorch.callbacks.ModelCheckpoint(
            dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max", enable_version_counter=False
        ),
        # Every epoch, improved or not (``save_last`` only copies when the best improves): what a resume needs.
        L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False),
        RngState(),
    ]
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is not None and "_target_" in cb_cfg:
            callbacks.append(hydra.utils.instantiate(cb_cfg))
    loggers: list[Any] = []
    for lg_cfg in (cfg.get("logger") or {}).values():
        if lg_cfg is not None and "_target_" in lg_cfg:
            # W&B runs of a whole CV share one folder (``tracking_dir``); file loggers stay with their fold.
            save_dir = tracking_dir if "Wandb" in lg_cfg._target_ else out_dir / "logs"
            # W&B reads the git commit from its folder, and warns "git root ... does not exist" when it is missing
            save_dir.mkdir(parents=True, exist_ok=True)
            # _convert_="all": plain dicts (W&B ignores a DictConfig ``settings``)
            loggers.append(
                hydra.utils.instantiate(lg_cfg, save_dir=str(save_dir), name=run_name, _convert_="all")
            )
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.update(OmegaConf.to_container(stage_cfg.trainer, resolve=True) if stage_cfg.get("trainer") else {})
    if cfg.get("debug_trainer"):
        kwargs.update(OmegaConf.to_container(cfg.debug_trainer, resolve=True))
    kwargs.pop("_target_", None)
    if isinstance(kwargs.get("profiler"), dict):  # debug=profiler: one report folder per stage of the fold
        kwargs["profiler"] = hydra.utils.instantiate(
            kwargs["profiler"], dirpath=str(out_dir / "profiles" / stage)
        )
    for lg in loggers:  # the whole run config and environment, not only the module's hyperparameters
        lg.log_hyperparams({"run": run_config(cfg), "stage": stage, "environment": fingerprint()})
    common = {"logger": loggers or False, "default_root_dir": str(out_dir)}
    fit = L.Trainer(**kwargs, callbacks=callbacks, **common)
    test_kwargs = {
        k: v for k, v in kwargs.items() if k not in ("devices", "strategy", "sync_batchnorm", "num_nodes")
    }
    test = L.Trainer(**test_kwargs, devices=1, **common)
    return fit, test


def _fit_stage(cfg: DictConfig, stage: str, module: StageModule, datamodule: L.LightningDataModule,
               out_dir: Path, run_name: str, tracking_dir: Path) -> dict[str, Any]:  # fmt: skip
    """Fit, reload the best checkpoint (weights only), test it on the rater's own boxes.

    Resumable: a stage that finished before (``done.json``) is reloaded, not retrained; one that was cut off
    continues from its ``last.ckpt`` (model, optimiser, scheduler, RNG and epoch) to the same result.
    """
    ckpt_dir = out_dir / "checkpoints" / stage
    if (ckpt_dir / "done.json").exists() and (ckpt_dir / "best.ckpt").exists():
        load_stage_weights(module, ckpt_dir / "best.ckpt")
        log.info(f"{run_name}: finished in an earlier run, reloaded")
        return json.loads((ckpt_dir / "done.json").read_text())
    resume = ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").exists() else None
    if resume is not None:
        try:
            torch.load(resume, map_location="cpu", weights_only=True)
        except Exception as exc:  # cut off while being written: start the stage again
            log.warning(f"{run_name}: {resume} is unreadable ({type(exc).__name__}); the stage starts again")
            resume = None
        else:
            log.info(f"{run_name}: resuming from {resume}")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    stage_cfg = cfg.model[stage]
    trainer, tester = _trainer(cfg, stage, stage_cfg, out_dir, module.monitor, run_name, tracking_dir)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    fit_seconds = time.perf_counter() - start
    # Under ddp_spawn the fit ran in other processes, and a fit resumed from a last.ckpt of its final epoch logs
    # nothing: the best validation value is read from the checkpoint, never from in-process state.
    best_val, epochs = _checkpoint_progress(ckpt_dir / "last.ckpt")
    if (ckpt_dir / "best.ckpt").exists():
        load_stage_weights(module, ckpt_dir / "best.ckpt")
    _reload_csv_columns(tester)
    best_val_metrics: dict[str, float] = {}
    if isinstance(module, PatchClassifier):  # validation F1 at the chosen checkpoint: what sweeps optimise
        tester.validate(module, datamodule=datamodule, verbose=False)
        best_val_metrics = {k: v for k, v in module.last_metrics.get("val", {}).items() if k != "val/confmat"}
    tester.test(module, datamodule=datamodule, verbose=False)
    metrics = dict(module.last_metrics.get("test", {}))
    metrics.update(best_val_metrics)
    metrics["best_val"] = best_val
    metrics["epochs"] = epochs
    metrics["fit_seconds"] = round(fit_seconds, 2)
    if wandb_settings(cfg) is not None and "test/confmat" in metrics:
        _log_confusion(
            tester, metrics["test/confmat"], list(module.class_names), f"{run_name} test (rater boxes)"
        )
    finish_active_run()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ckpt_dir / "done.json", json.dumps(metrics, default=float))
    return metrics


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
    best = ckpt["state_dict"].get("val_best.max_value")
    return (float("nan") if best is None else float(best)), int(ckpt.get("epoch", -1)) + 1


def _log_confusion(trainer: L.Trainer, confmat: list[list[int]], classes: list[str], title: str) -> None:
    """A W&B confusion-matrix plot rebuilt from the counts (the run is Lightning's WandbLogger's)."""
    from lightning.pytorch.loggers import WandbLogger

    y_true = [i for i, row in enumerate(confmat) for j, n in enumerate(row) for _ in range(int(n))]
    y_pred = [j for i, row in enumerate(confmat) for j, n in enumerate(row) for _ in range(int(n))]
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and y_true:
            lg.experiment.log({"test/confusion_matrix": confusion_plot(y_true, y_pred, classes, title)})


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


def build_modules(cfg: DictConfig) -> dict[str, StageModule]:
    """The three LightningModules from their configs (``model.<stage>.module``), then the baseline's if enabled
    (built last, so the three stages' initial weights do not depend on whether it is)."""
    stages = (*STAGES, "baseline") if baseline_enabled(cfg) else STAGES
    # _convert_="all": plain lists and dicts in hyperparameters, so checkpoints load with weights_only=True.
    return {stage: hydra.utils.instantiate(cfg.model[stage].module, _convert_="all") for stage in stages}


def run_fold(
    cfg: DictConfig, fold: int, rater: str, out_dir: Path, tracking_dir: Path | None = None
) -> dict[str, Any]:
    """Everything for one fold and one rater; writes checkpoints, folds.csv, predictions.csv, metrics.json.

    W&B runs go to ``tracking_dir`` (default: the fold's ``logs/``).
    """
    out_dir = Path(out_dir)
    tracking_dir = Path(tracking_dir) if tracking_dir else out_dir / "logs"
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cfg = OmegaConf.merge(cfg, {"data": {"rater": rater, "fold": fold}})  # what loggers record is this run
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    dataset = prepare_data(cfg)
    folds = dataset.folds(cfg.data.num_folds, cfg.data.split_seed)
    folds.to_csv(out_dir / "folds.csv")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    modules = build_modules(cfg)
    detector: CanalDetector = modules["detector"]  # type: ignore[assignment]
    rootlet: RootletClassifier = modules["rootlet"]  # type: ignore[assignment]
    grader: GradeClassifier = modules["grade"]  # type: ignore[assignment]
    patch_stages = [s for s in modules if s != "detector"]  # rootlet, grade and the baseline if enabled
    geometry = {stage: stage_geometry(cfg, stage) for stage in patch_stages}
    write_pipeline_spec(out_dir, cfg, {s: modules[s] for s in STAGES}, geometry)

    metrics: dict[str, Any] = {"fold": fold, "rater": rater}
    box_rater = detector_rater(cfg, rater)
    det_dm = SliceDataModule(
        image_size=detector.image_size,
        balance=cfg.model.detector.get("balance", 0.0),
        **_data_kwargs(cfg, fold, box_rater, cfg.model.detector),
    )
    det_dm.setup()
    metrics["splits"] = det_dm.describe()
    metrics["detector"] = _fit_stage(
        cfg, "detector", detector, det_dm, out_dir, f"{box_rater}-detector-fold{fold}", tracking_dir
    )
    metrics["detector"]["boxes"] = box_rater
    for stage in patch_stages:
        module = modules[stage]
        stage_cfg = cfg.model[stage]
        task = "rootlet" if stage == "rootlet" else "grade"
        dm = PatchDataModule(task=task, patch=geometry[stage], balanced=stage_cfg.balanced,
                             samples_per_epoch=stage_cfg.get("samples_per_epoch"),
                             series_reference=module.hparams.series_reference,
                             **_data_kwargs(cfg, fold, rater, stage_cfg))  # fmt: skip
        dm.setup()
        module.set_class_prior(dm.class_counts("train"))
        metrics[stage] = {
            "gt_box": _fit_stage(cfg, stage, module, dm, out_dir, f"{rater}-{stage}-fold{fold}", tracking_dir)
        }

    pipeline = Pipeline(detector, rootlet, grader, geometry["rootlet"], batch_size=cfg.data.eval_batch_size,
                        grade_patch=geometry["grade"])  # fmt: skip
    predictions = predict_test_images(pipeline, dataset, det_dm.rows["test"]["patient"].unique(), fold, rater)
    if "baseline" in modules:
        predictions["baseline_grade"] = baseline_grades(
            modules["baseline"],
            dataset,
            predictions["sop_instance_uid"],
            rater,
            geometry["baseline"],  # type: ignore[arg-type]
            cfg.data.eval_batch_size,
        )
    atomic_write_text(out_dir / "predictions.csv", predictions.to_csv(index=False))
    metrics["rootlet"]["chained"], metrics["grade"]["chained"] = chained_metrics(predictions, rater)
    metrics["grade"]["chained_balanced"] = chained_metrics(predictions, rater, balanced=True)[1]
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    metrics["environment"] = fingerprint()  # what the numbers depend on (make reproduce compares it)
    log_pipeline_run(cfg, f"{rater}-pipeline-fold{fold}", tracking_dir, metrics, predictions)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=float))
    return metrics


def consensus_detector(cfg: DictConfig) -> bool:
    """Whether the detector learns the consensus boxes (``model.detector.boxes: consensus``), so one detector per
    fold serves every rater, or data.rater's own (``rater``)."""
    boxes = cfg.model.detector.get("boxes", "rater")
    if boxes not in ("rater", CONSENSUS):
        raise ValueError(f"model.detector.boxes must be 'rater' or '{CONSENSUS}', got {boxes!r}")
    return boxes == CONSENSUS


def detector_rater(cfg: DictConfig, rater: str) -> str:
    """Whose boxes the detector learns for ``rater``'s fold."""
    return CONSENSUS if consensus_detector(cfg) else rater


def share_detector(cfg: DictConfig, trained: Path, out_dir: Path) -> bool:
    """Give the fold in ``out_dir`` the finished consensus detector of the same fold in ``trained`` (another
    rater's fold folder), so ``run_fold`` reloads it instead of training the same network again. The copy is
    what training would give: the consensus detector depends on neither rater's labels. Returns whether shared."""
    src, dst = Path(trained) / "checkpoints" / "detector", Path(out_dir) / "checkpoints" / "detector"
    # A fit that saves no checkpoint (fast_dev_run) leaves nothing to share: each rater's fold trains its own.
    if not consensus_detector(cfg) or not (src / "done.json").exists() or not (src / "best.ckpt").exists():
        return False
    if (dst / "done.json").exists():
        return True
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("best.ckpt", "done.json"):  # done.json last: it marks the stage finished
        atomic_copy(src / name, dst / name)
    return True


def write_pipeline_spec(out_dir: Path, cfg: DictConfig, modules: dict[str, StageModule],
                        geometry: dict[str, PatchGeometry]) -> None:  # fmt: skip
    """What ``lumbar-predict`` needs besides the checkpoints, as plain data (nothing in it is ever executed):
    each stage's class and hyperparameters, the patch geometry, and the whole run config as plain YAML."""
    spec = {
        "stages": {s: {"class": type(m).__name__, "hparams": dict(m.hparams)} for s, m in modules.items()},
        "geometry": {s: dataclasses.asdict(g) for s, g in geometry.items()},
        "batch_size": int(cfg.data.eval_batch_size),
        "rater": str(cfg.data.rater),
        "fold": int(cfg.data.fold),
    }
    atomic_write_text(out_dir / "pipeline.json", json.dumps(spec, indent=2, default=str))
    atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def flat_scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``a/b/c`` keys (for loggers)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def log_pipeline_run(
    cfg: DictConfig, name: str, tracking_dir: Path, metrics: dict[str, Any], predictions: pd.DataFrame
) -> None:
    """The fold's chained results as a W&B run: metrics, confusion matrices, the per-image predictions table."""
    with wandb_run(cfg, name, tracking_dir, job_type="pipeline") as run:
        if run is None:
            return
        import wandb

        rater = metrics["rater"]
        run.log(flat_scalars({k: metrics[k] for k in ("detector", "rootlet", "grade")}))
        for task, column, classes in (
            ("rootlet", "level", list(LEVEL_INDEX)),
            ("grade", "grade", list(GRADES)),
        ):
            pred_col = "pred_level" if task == "rootlet" else "pred_grade"
            rows = predictions[(predictions[f"{column}_{rater}"] != "") & (predictions[pred_col] != "")]
            if len(rows):
                y_true = [classes.index(v) for v in rows[f"{column}_{rater}"]]
                y_pred = [classes.index(v) for v in rows[pred_col]]
                run.log(
                    {f"chained/{task}_confusion": confusion_plot(y_true, y_pred, classes, f"{name} {task}")}
                )
        run.log({"predictions": wandb.Table(dataframe=predictions.astype(str))})


def predict_test_images(pipeline: Pipeline, dataset: LumbarDataset, patients: np.ndarray, fold: int | str,
                        rater: str, gt_boxes: bool = True) -> pd.DataFrame:  # fmt: skip
    """One row per labelled image of the test patients: every rater's labels, the chained prediction, and (with
    ``gt_boxes``) the prediction on the training rater's own box (the ground-truth-box path)."""
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
    vertebral = labels.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid")["vertebral_level"]
    frame["vertebral_level"] = frame["sop_instance_uid"].map(vertebral).fillna("")
    pixels = [dataset.image(uid) for uid in uids]
    spacing = images.loc[uids, "pixel_spacing_col"].astype(float).tolist()
    series = images.loc[uids, "series_instance_uid"].to_numpy()
    chained = pd.DataFrame([p.as_row() for p in pipeline.predict(pixels, pixel_mm=spacing, series=series)])
    frame = pd.concat([frame, chained], axis=1)
    if not gt_boxes:
        return frame
    own = dataset.labels.for_rater(rater)
    has_box = [uid in own.index for uid in uids]
    if any(has_box):
        idx = [i for i, h in enumerate(has_box) if h]
        boxes = own.loc[[uids[i] for i in idx], ["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32)
        gt = pipeline.predict([pixels[i] for i in idx], boxes=boxes, pixel_mm=[spacing[i] for i in idx],
                              series=series[idx])  # fmt: skip
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
        out.update({uid: GRADES[c] for uid, c in zip(part, calls, strict=True)})
    return [out[uid] for uid in uids]


def chained_metrics(predictions: pd.DataFrame, rater: str, balanced: bool = False) -> tuple[dict, dict]:
    """Rootlet/cord and grade agreement of the chained pipeline with ``rater`` on the images the rater labelled.

    The grade is compared where both the rater and the pipeline call the slice rootlet level (both have a grade).
    """
    level_col, grade_col = f"level_{rater}", f"grade_{rater}"
    pred_grade = "pred_grade_balanced" if balanced else "pred_grade"
    labelled = predictions[predictions[level_col] != ""]
    rootlet = agreement(labelled[level_col], labelled["pred_level"], list(LEVEL_INDEX))
    graded = labelled[(labelled[grade_col] != "") & (labelled[pred_grade] != "")]
    grade = agreement(graded[grade_col], graded[pred_grade], GRADES)
    grade["coverage"] = float(len(graded) / max(1, (labelled[grade_col] != "").sum()))
    return rootlet, grade
