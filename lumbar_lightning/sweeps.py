"""Sweep bookkeeping: after a multirun, the best trial's objective, overrides and whole config in one file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.io import atomic_write_text


def best_trial(sweep_dir: Path, maximize: bool = True) -> dict[str, Any] | None:
    """The job of ``sweep_dir`` whose ``objective.json`` is best: its number, value, overrides and config."""
    trials = []
    for objective in Path(sweep_dir).glob("*/objective.json"):
        value = json.loads(objective.read_text())["value"]
        if value == value:  # NaN objectives never win
            trials.append((value, objective.parent))
    if not trials:
        return None
    # Ties go to the earliest job, as Optuna's best_trial does.
    order = sorted(
        trials, key=lambda t: (-t[0] if maximize else t[0], int(t[1].name) if t[1].name.isdigit() else 0)
    )
    value, job = order[0]
    overrides = (
        OmegaConf.load(job / ".hydra" / "overrides.yaml")
        if (job / ".hydra" / "overrides.yaml").exists()
        else []
    )
    config = (
        OmegaConf.load(job / ".hydra" / "config.yaml") if (job / ".hydra" / "config.yaml").exists() else {}
    )
    return {"job": job.name, "value": value, "trials": len(trials), "overrides": OmegaConf.to_container(overrides),
            "config": OmegaConf.to_container(config)}  # fmt: skip


class BestTrialCallback(Callback):
    """Writes ``best_trial.yaml`` into the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        direction = str(OmegaConf.select(config, "hydra.sweeper.direction", default="maximize"))
        best = best_trial(sweep_dir, maximize=not direction.startswith("min"))
        if best is not None:
            atomic_write_text(sweep_dir / "best_trial.yaml", OmegaConf.to_yaml(OmegaConf.create(best)))
