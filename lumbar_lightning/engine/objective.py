"""The sweep objective and its bookkeeping.

``lumbar-train`` returns ``objective.metric``: a validation metric of one stage at its best checkpoint, for
``data.fold`` or averaged over ``objective.folds``, so Optuna and other sweepers optimise it. After a multirun,
``BestTrialCallback`` writes the best trial's objective, overrides and whole config into one file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.engine.fold import run_fold
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.layout import RunLayout
from lumbar_lightning.tracking.wandb import wandb_settings

log = logging.getLogger("lumbar_lightning")


def objective_value(metrics: dict, metric: str) -> float:
    """``<stage>/<name>`` of a fold's metrics, e.g. ``grade/val/f1`` (the grader's validation macro F1 at its
    best checkpoint) or ``detector/best_val``."""
    stage, name = metric.split("/", 1)
    tree = metrics[stage]
    tree = tree.get("gt_box", tree)
    if name not in tree:
        raise KeyError(
            f"objective {metric!r}: stage {stage} has no {name!r} (it has {', '.join(sorted(tree))})"
        )
    return float(tree[name])


def train_for_objective(cfg: DictConfig, root: Path) -> float:
    """Train ``data.fold`` (or each of ``objective.folds``), write ``objective.json``, return the mean."""
    folds = list(cfg.objective.folds) if cfg.objective.get("folds") is not None else [int(cfg.data.fold)]
    values = {}
    for fold in folds:
        layout = RunLayout(root).fold(str(cfg.data.rater), int(fold))
        out = layout.dir
        metrics = run_fold(cfg, int(fold), str(cfg.data.rater), out)
        log.info(f"fold {fold} rater {cfg.data.rater}: {fold_line(metrics)}")
        log.info(f"outputs: {out}")
        if wandb_settings(cfg) is not None:
            log.info(f"W&B runs: {layout.logs / 'wandb'} (offline ones upload later with `wandb sync`)")
        values[int(fold)] = objective_value(metrics, cfg.objective.metric)
    value = float(np.mean(list(values.values())))
    atomic_write_text(
        RunLayout(root).objective,
        json.dumps({"metric": cfg.objective.metric, "value": value, "folds": values}, indent=1),
    )
    log.info(f"objective {cfg.objective.metric} = {value:.4f} (mean over folds {folds})")
    return value


def fold_line(metrics: dict) -> str:
    """One line a person can read: detection, rootlet and grade agreement of the chained pipeline."""
    det = metrics["detector"]
    grade = metrics["grade"]["chained"]
    level = (
        f"rootlet/cord {100 * metrics['rootlet']['chained']['accuracy']:.1f}%, "
        if "rootlet" in metrics
        else ""
    )  # a run with stages=[detector, grade] has no level call
    return (
        f"detection rate {100 * det.get('test/acc', float('nan')):.1f}% (IoU {det.get('test/iou', float('nan')):.2f}), "
        f"{level}grade {100 * grade['accuracy']:.1f}% "
        f"(macro F1 {100 * grade['f1_macro']:.1f}), {metrics['seconds']:.0f}s"
    )


def best_trial(sweep_dir: Path, maximize: bool = True) -> dict[str, Any] | None:
    """The job of ``sweep_dir`` whose ``objective.json`` is best: its number, value, overrides and config."""
    trials = []
    for job in Path(sweep_dir).iterdir():
        objective = RunLayout(job).objective
        if objective.is_file():
            value = json.loads(objective.read_text())["value"]
            if value == value:  # NaN objectives never win
                trials.append((value, job))
    if not trials:
        return None
    # Ties go to the earliest job, as Optuna's best_trial does.
    order = sorted(
        trials, key=lambda t: (-t[0] if maximize else t[0], int(t[1].name) if t[1].name.isdigit() else 0)
    )
    value, job = order[0]
    saved = RunLayout(job)
    overrides = OmegaConf.load(saved.hydra_overrides) if saved.hydra_overrides.exists() else []
    config = OmegaConf.load(saved.hydra_config) if saved.hydra_config.exists() else {}
    return {
        "job": job.name,
        "value": value,
        "trials": len(trials),
        "overrides": OmegaConf.to_container(overrides),
        "config": OmegaConf.to_container(config),
    }


class BestTrialCallback(Callback):
    """Writes ``best_trial.yaml`` into the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        direction = str(OmegaConf.select(config, "hydra.sweeper.direction", default="maximize"))
        best = best_trial(sweep_dir, maximize=not direction.startswith("min"))
        if best is not None:
            atomic_write_text(sweep_dir / "best_trial.yaml", OmegaConf.to_yaml(OmegaConf.create(best)))
