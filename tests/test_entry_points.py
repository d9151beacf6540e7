"""Every console script as a user runs it: one spelling for the data set, every debug preset under lumbar-cv,
and the package installed from a wheel (configs included), not from the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_CV
from omegaconf import OmegaConf

BIN = Path(sys.executable).parent


def _run(
    script: str, *args: str, cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / script), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stderr[-3000:]}"
    return result


def _config(run_dir: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True)


# ---------------------------------------------------------------------------------------------------------- data_dir=
def test_train_takes_data_dir(tiny_phantom: Path, tmp_path: Path) -> None:
    """lumbar-train end to end under fast_dev_run, on the fold asked for: the fold's test patients, each image
    once, and both patch stages' chained agreement in the metrics."""
    run = tmp_path / "train"
    _run(
        "lumbar-train",
        f"data_dir={tiny_phantom}",
        "debug=fdr",
        "data.fold=1",
        "logger=none",
        f"hydra.run.dir={run}",
        *TINY_CV,
    )
    assert _config(run)["data"]["data_dir"] == str(tiny_phantom)
    out = run / "A1" / "fold_1"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fold"] == 1 and metrics["rater"] == "A1"
    for stage in ("rootlet", "grade"):
        assert 0.0 <= metrics[stage]["chained"]["accuracy"] <= 1.0
    folds = pd.read_csv(out / "folds.csv")
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    truth = pd.read_csv(tiny_phantom / "truth.csv")
    assert set(preds["sop_instance_uid"]) <= set(truth["sop_instance_uid"]) and len(preds) > 0
    assert set(preds["patient"]) == set(folds.loc[folds["part"] == 1, "patient"])
    assert preds["sop_instance_uid"].is_unique


def test_synth_takes_data_dir(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    _run(
        "lumbar-synth",
        f"data_dir={out}",
        "n_patients=2",
        "seed=4",
        "phantom.image_size=96",
        "workers=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    labels = pd.read_csv(out / "labels.csv")
    assert set(labels["analyzer"]) == {"A1", "A2"} and len(list((out / "dicom").rglob("*.dcm"))) > 10


def test_ingest_takes_data_dir(tiny_dataset: Path, tmp_path: Path) -> None:
    _run("lumbar-ingest", f"data_dir={tiny_dataset}", f"hydra.run.dir={tmp_path / 'run'}", "num_folds=4")
    assert json.loads((tmp_path / "run" / "ingest_report.json").read_text())["images"] == 48


def test_predict_takes_data_dir(tiny_run: Path, tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "graded"
    _run(
        "lumbar-predict",
        f"run_dir={tiny_run}",
        f"data_dir={tiny_phantom}",
        f"out_dir={out}",
        "overlays=false",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(preds) == len(pd.read_csv(tiny_phantom / "truth.csv"))  # every slice of the data set's dicom/


def test_predict_without_input_or_data_dir_says_so(tiny_run: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "lumbar-predict"), f"run_dir={tiny_run}", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "give input=DICOM_FOLDER or data_dir=DATASET" in result.stderr


# ---------------------------------------------------------------------------------------------------------- debug=
def _cv(data: Path, run: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return _run(
        "lumbar-cv",
        f"data_dir={data}",
        "logger=none",
        "cv.folds=[0]",
        "cv.workers=1",
        "threads=1",
        f"hydra.run.dir={run}",
        *TINY_CV,
        *overrides,
    )


def _ckpt_epochs(fold: Path, stage: str) -> int:
    return int(torch.load(fold / "checkpoints" / stage / "last.ckpt", weights_only=True)["epoch"]) + 1


@pytest.mark.slow  # make test-full: debug presets compose in test_configs, debug=fdr trains in test_train_cli; 18 s
def test_cv_debug_fdr(tiny_phantom: Path, tmp_path: Path) -> None:
    """fast_dev_run saves no checkpoint: each rater's fold trains its own detector instead of copying none."""
    run = tmp_path / "cv"
    _cv(tiny_phantom, run, "debug=fdr")
    assert not list(run.rglob("*.ckpt"))
    summary = json.loads((run / "cv_summary.json").read_text())
    assert {"A1-C1", "A2-C2"} <= set(summary["grade"])
    for rater in ("A1", "A2"):
        assert json.loads((run / rater / "fold_0" / "metrics.json").read_text())["detector"]["epochs"] == 0


@pytest.mark.slow  # make test-full: debug presets compose in test_configs, debug=fdr trains in test_train_cli; 25 s
def test_cv_debug_limit(tiny_phantom: Path, tmp_path: Path) -> None:
    run = tmp_path / "cv"
    _cv(tiny_phantom, run, "debug=limit")
    for rater in ("A1", "A2"):
        fold = run / rater / "fold_0"
        assert [_ckpt_epochs(fold, s) for s in ("rootlet", "grade")] == [2, 2]
        assert json.loads((fold / "metrics.json").read_text())["detector"]["epochs"] == 2
    assert _ckpt_epochs(run / "A1" / "fold_0", "detector") == 2
    # Real checkpoints, so A2's fold reloads the consensus detector A1's fold trained instead of training one
    assert not (run / "A2" / "fold_0" / "checkpoints" / "detector" / "last.ckpt").exists()
    assert (run / "cv_summary.json").exists()


@pytest.mark.slow  # make test-full
def test_cv_debug_overfit(tiny_phantom: Path, tmp_path: Path) -> None:
    run = tmp_path / "cv"
    _cv(tiny_phantom, run, "debug=overfit", "debug_trainer.max_epochs=3")
    fold = run / "A1" / "fold_0"
    assert _config(run)["debug_trainer"]["overfit_batches"] == 1
    assert _ckpt_epochs(fold, "grade") == 3
    assert (run / "cv_summary.json").exists()


@pytest.mark.slow  # make test-full
def test_cv_debug_profiler(tiny_phantom: Path, tmp_path: Path) -> None:
    run = tmp_path / "cv"
    _cv(tiny_phantom, run, "debug=profiler")
    report = run / "A1" / "fold_0" / "profiles" / "grade" / "fit-profile.txt"
    assert report.is_file() and "run_training_epoch" in report.read_text()
    assert (run / "cv_summary.json").exists()


# ---------------------------------------------------------------------------------------------------------- wheel
def test_wheel_carries_the_configs(tiny_phantom: Path, tmp_path: Path) -> None:
    """Build the wheel, install it (no dependencies: they come from this environment) into a clean virtual
    environment that cannot see the checkout, and run an entry point from there."""
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(repo),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next((tmp_path / "dist").glob("lumbar_lightning-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "deps.pth").write_text(
        "\n".join(deps) + "\n"
    )  # path lines only: the editable install's hook stays out
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.copytree(tiny_phantom, tmp_path / "data")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import lumbar_lightning; print(lumbar_lightning.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "lumbar_lightning.cli.ingest",
            "data_dir=data",
            "hydra.run.dir=run",
            "num_folds=4",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "ingest_report.json").read_text())["patients"] == 8
    assert (site / "lumbar_lightning" / "conf" / "experiment" / "demo.yaml").is_file()


@pytest.mark.parametrize("name", ["cv", "train", "reproduce", "ingest", "synth", "predict", "compare"])
def test_every_entry_point_config_is_in_the_package(name: str) -> None:
    from lumbar_lightning.conf import CONF_DIR

    assert (Path(CONF_DIR) / f"{name}.yaml").is_file()
    assert Path(CONF_DIR).is_relative_to(Path(__file__).resolve().parent.parent / "lumbar_lightning")
