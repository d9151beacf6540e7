"""``lumbar-train experiment=X data.fold=k data.rater=A1``: the three stages for one fold and one rater.

Its return value is the sweep objective (``objective``): a validation metric of one stage at its best
checkpoint, for ``data.fold`` or averaged over ``objective.folds``, so Optuna and other sweepers optimise it.
"""

from __future__ import annotations

import json

import hydra
import numpy as np
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, log, output_dir
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.runner import run_fold
from lumbar_lightning.tracking import wandb_settings


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


@exit_on_contract_error
def train_for_objective(cfg: DictConfig) -> float:
    """Train ``data.fold`` (or each of ``objective.folds``), write ``objective.json``, return the mean."""
    folds = list(cfg.objective.folds) if cfg.objective.get("folds") is not None else [int(cfg.data.fold)]
    values = {}
    for fold in folds:
        out = output_dir() / cfg.data.rater / f"fold_{fold}"
        metrics = run_fold(cfg, int(fold), str(cfg.data.rater), out)
        log.info(f"fold {fold} rater {cfg.data.rater}: {fold_line(metrics)}")
        log.info(f"outputs: {out}")
        if wandb_settings(cfg) is not None:
            log.info(f"W&B runs: {out / 'logs' / 'wandb'} (offline ones upload later with `wandb sync`)")
        values[int(fold)] = objective_value(metrics, cfg.objective.metric)
    value = float(np.mean(list(values.values())))
    atomic_write_text(output_dir() / "objective.json",
                      json.dumps({"metric": cfg.objective.metric, "value": value, "folds": values}, indent=1))  # fmt: skip
    log.info(f"objective {cfg.objective.metric} = {value:.4f} (mean over folds {folds})")
    return value


def fold_line(metrics: dict) -> str:
    """One line a person can read: detection, rootlet and grade agreement of the chained pipeline."""
    det = metrics["detector"]
    root, grade = metrics["rootlet"]["chained"], metrics["grade"]["chained"]
    return (
        f"detection rate {100 * det.get('test/acc', float('nan')):.1f}% (IoU {det.get('test/iou', float('nan')):.2f}), "
        f"rootlet/cord {100 * root['accuracy']:.1f}%, grade {100 * grade['accuracy']:.1f}% "
        f"(macro F1 {100 * grade['f1_macro']:.1f}), {metrics['seconds']:.0f}s"
    )


@hydra.main(config_path=CONF_PATH, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return train_for_objective(cfg)


if __name__ == "__main__":
    main()
