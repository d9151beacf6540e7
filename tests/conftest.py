"""Shared fixtures: small data sets written as real DICOM by the project's own writer."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

# isort: off
import lumbar_lightning  # noqa: F401  (first: pins numerics before numpy and torch are imported)

# isort: on
import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from lumbar_lightning.data.dicom.writer import SeriesInfo, deterministic_uid, write_mr_slice
from lumbar_lightning.data.labels import CSV_COLUMNS

LABEL_HEADER = list(CSV_COLUMNS)


def quiet_trainer(**kwargs: object):
    """A Lightning Trainer for a test: one epoch, no logger, checkpoints, progress bar or summary."""
    import lightning as L

    options = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**options, **kwargs})


def write_tiny_dataset(
    root: Path, n_patients: int = 12, slices: int = 4, size: int = 32, seed: int = 0
) -> Path:
    """A data set in the contract: ``n_patients`` x ``slices`` noisy images, two raters, varied grades."""
    rng = np.random.default_rng(seed)
    rows = []
    grades = "AAAABBBCD"
    for p in range(n_patients):
        series = SeriesInfo(
            patient_id=f"PAT{p:03d}",
            study_uid=deterministic_uid("study", seed, p),
            series_uid=deterministic_uid("series", seed, p),
            frame_of_reference_uid=deterministic_uid("for", seed, p),
            pixel_spacing=0.7,
            slice_thickness=4.0,
            spacing_between_slices=4.4,
        )
        for s in range(slices):
            uid = deterministic_uid("sop", seed, p, s)
            pixels = rng.integers(0, 4000, size=(size, size), dtype=np.uint16)
            write_mr_slice(
                root / "dicom" / f"p{p}" / f"{s}.dcm", pixels, series, uid, s + 1, (0.0, 0.0, -4.4 * s)
            )
            level = "cord" if s == 0 else "rootlet"
            grade = "" if level == "cord" else grades[(p + s) % len(grades)]
            for rater in ("A1", "A2"):
                rows.append([rater, uid, 8, 8, 20, 22, level, grade, f"L{s}/L{s + 1}"])
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LABEL_HEADER)
        w.writerows(rows)
    return root


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "ds")


TINY_PHANTOM = dict(n_patients=8, seed=5, image_size=128, pixel_spacing_mm=1.72)


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom cohort (8 patients, 128 px) shared by the model and entry-point tests."""
    from lumbar_lightning.data.phantom.cohort import PhantomCohort, PhantomConfig

    root = tmp_path_factory.mktemp("tiny_phantom")
    PhantomCohort.generate(PhantomConfig(**TINY_PHANTOM), root, workers=2)
    return root


#: Overrides for a CV/training run that takes seconds on the tiny phantom (shape checks, not accuracy).
TINY_CV = [
    "data.num_folds=4",
    "data.patch.size=24",
    "model.detector.module.image_size=96",
    "model.rootlet.module.width=0.125",
    "model.grade.module.width=0.125",
    "model.detector.trainer.max_epochs=1",
    "+model.detector.trainer.limit_train_batches=2",
    "model.rootlet.trainer.max_epochs=1",
    "model.grade.trainer.max_epochs=1",
    "model.rootlet.samples_per_epoch=64",
    "model.grade.samples_per_epoch=64",
    "model.baseline.trainer.max_epochs=1",
    "model.baseline.samples_per_epoch=64",
    "trainer.enable_progress_bar=false",
    "experiment_name=tinycv",
]


#: Weight averaging of the grader only (``model.<stage>.callbacks``), as a test turns it on.
GRADE_EMA = (
    "+model.grade.callbacks={ema: {_target_: lightning.pytorch.callbacks.EMAWeightAveraging, decay: 0.5}}"
)


def tiny_cv_config(*overrides: str) -> DictConfig:
    """The ``cv`` app's config as a test composes it: the test's own overrides, then TINY_CV's small settings."""
    from hydra import compose, initialize_config_dir

    from lumbar_lightning.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="cv", overrides=[*overrides, *TINY_CV])


@pytest.fixture(scope="session")
def tiny_run(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trained fold (rater A1, fold 0) on the tiny phantom, as `lumbar-train` lays it out."""
    from hydra import compose, initialize_config_dir

    from lumbar_lightning.conf import CONF_DIR
    from lumbar_lightning.engine.fold import run_fold

    root = tmp_path_factory.mktemp("tiny_run")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            # threads=1: the fold's numbers depend on the thread count, and reproduce tests train it again
            config_name="train",
            overrides=[f"data.data_dir={tiny_phantom}", "logger=none", "threads=1", *TINY_CV],
        )
    run_fold(cfg, 0, "A1", root / "A1" / "fold_0")
    return root


class RecordingNet(torch.nn.Module):
    """A patch network that keeps every batch it is given (``seen``); its logits are ``logits(x)`` (default: zeros
    over four grades), so a test can check exactly which patches a pipeline cut and what it made of them."""

    def __init__(self, logits: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.logits = logits or (lambda x: torch.zeros(len(x), 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.logits(x)
