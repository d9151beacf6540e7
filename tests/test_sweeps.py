"""Sweeps and scale-out through the tools users trust: Optuna via Hydra's sweeper, jobs via submitit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CV
from hydra import compose, initialize_config_dir
from wandb_offline import read_run

from lumbar_lightning.conf import CONF_DIR

TINY = [o for o in TINY_CV if not o.startswith(("experiment_name=", "model.grade.module.width="))]
SEARCHED = {
    "model.grade.module.optimizer.lr",
    "model.grade.module.width",
    "model.grade.patch.size",
    "model.grade.patch.margin",
    "data.augment.rotate_deg",
    "data.augment.noise_std",
    "model.grade.balanced",
}


def _multirun(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lumbar_lightning.cli.train", "-m", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_optuna_search_runs_trials_in_one_folder_and_group_and_writes_the_best(
    tiny_phantom: Path, tmp_path: Path
) -> None:
    result = _multirun(
        "hparams_search=grade_optuna",
        "hydra.sweeper.n_trials=2",
        f"data.data_dir={tiny_phantom}",
        "logger=wandb",
        f"hydra.sweep.dir={tmp_path}",
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    objectives = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("*/objective.json")}
    assert set(objectives) == {"0", "1"}
    assert all(o["metric"] == "grade/val/f1" and 0.0 <= o["value"] <= 1.0 for o in objectives.values())
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == SEARCHED
    best = yaml.safe_load((tmp_path / "best_trial.yaml").read_text())
    assert best["value"] == max(o["value"] for o in objectives.values()) == results["best_value"]
    assert best["trials"] == 2 and best["config"]["objective"]["metric"] == "grade/val/f1"
    chosen = dict(o.split("=", 1) for o in best["overrides"])
    assert (
        float(chosen["model.grade.module.optimizer.lr"])
        == results["best_params"]["model.grade.module.optimizer.lr"]
    )
    runs = [read_run(d) for d in tmp_path.rglob("offline-run-*") if d.is_dir()]
    assert len(runs) == 2 * 4 and {r["group"] for r in runs} == {"grade_optuna"}  # 4 runs a trial, one group


@pytest.mark.slow  # make test-full: the Optuna sweep test covers multirun in make test; 27 s
def test_submitit_local_launcher_runs_one_fold_per_job(tiny_phantom: Path, tmp_path: Path) -> None:
    """The SLURM path without SLURM: the same sweep through submitit's local executor, two jobs at once."""
    result = _multirun(
        "data.fold=0,1",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=15",
        "threads=1",
        f"data.data_dir={tiny_phantom}",
        "logger=csv",
        f"hydra.sweep.dir={tmp_path}",
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, fold in (("0", 0), ("1", 1)):
        metrics = json.loads((tmp_path / job / "A1" / f"fold_{fold}" / "metrics.json").read_text())
        assert metrics["fold"] == fold
    assert len(list((tmp_path / ".submitit").glob("*/*_result.pkl"))) == 2  # two submitit jobs, not one


def test_slurm_launcher_config_composes_with_cluster_settings() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.timeout_min == 240
