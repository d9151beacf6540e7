"""Weights & Biases runs: offline unless the user sets a mode or key; never a patient identifier.

Lightning's ``WandbLogger`` makes one run per rater/stage/fold; ``wandb_run`` makes the per-fold pipeline run and
the cross-validation summary run. Every run is finished before the next starts, so CV and multirun never merge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def wandb_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """``wandb.init`` arguments from ``logger.wandb`` (None when W&B is not a configured logger)."""
    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return None
    return {
        k: v
        for k, v in OmegaConf.to_container(node, resolve=True).items()
        if k in {"project", "group", "mode", "tags", "entity", "settings"}
    }


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain values (paths and settings only: no data)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


@contextlib.contextmanager
def wandb_run(cfg: DictConfig, name: str, save_dir: Path, job_type: str) -> Iterator[Any]:
    """A W&B run that is always finished, or ``None`` when W&B is off."""
    settings = wandb_settings(cfg)
    if settings is None:
        yield None
        return
    import wandb

    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(**settings, name=name, dir=str(save_dir), job_type=job_type, config=run_config(cfg),
                     reinit="finish_previous")  # fmt: skip
    try:
        yield run
    finally:
        run.finish()


def finish_active_run() -> None:
    """End whatever run Lightning's WandbLogger opened, so the next stage starts a run of its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def confusion_plot(y_true: list[int], y_pred: list[int], class_names: list[str], title: str) -> Any:
    import wandb

    return wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=class_names, title=title)
