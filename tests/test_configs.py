"""Every experiment config composes and instantiates, so no config can rot."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lumbar_lightning.conf import CONF_DIR
from lumbar_lightning.engine.fold import build_modules
from lumbar_lightning.models.stages import CanalDetector, GradeClassifier, RootletClassifier

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
# (experiment, stage) off the paper's plateau schedule and best-validation checkpoint: a half cosine, final weights
COSINE = {("demo", "grade"), ("rsna2024", "grade")}


def test_there_are_experiments() -> None:
    assert {"demo", "paper_a1", "paper_a2"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("config_name", ["train", "cv"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment: str, config_name: str) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name=config_name, overrides=[f"experiment={experiment}"], return_hydra_config=True
        )
    OmegaConf.resolve(cfg)
    modules = build_modules(cfg)
    assert isinstance(modules["detector"], CanalDetector) and isinstance(modules["grade"], GradeClassifier)
    assert set(modules) - {"baseline"} == set(cfg.stages)
    if "rootlet" in cfg.stages:
        assert isinstance(modules["rootlet"], RootletClassifier)
    assert modules["grade"].class_names == tuple(cfg.grading.classes)  # the experiment's grading scheme
    assert cfg.task_name == config_name
    assert cfg.data.num_folds == 10 and cfg.data.rater in {"A1", "A2"}
    for stage in set(cfg.stages) - {"detector"}:  # the paper's optimiser and schedule
        opt = hydra.utils.instantiate(cfg.model[stage].module.optimizer)(params=modules[stage].parameters())
        assert type(opt).__name__ == "Adam"
        schedule = hydra.utils.instantiate(cfg.model[stage].module.scheduler)(optimizer=opt)
        if (experiment, stage) in COSINE:  # the demo's grader: a half cosine over exactly its epochs
            assert isinstance(schedule, torch.optim.lr_scheduler.CosineAnnealingLR)
            assert schedule.T_max == cfg.model[stage].trainer.max_epochs and schedule.eta_min == 0
        else:  # halved when val/acc stops improving
            assert isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau)
            assert schedule.mode == "max" and schedule.factor == 0.5
    for stage in set(cfg.stages) | ({"baseline"} & set(modules)):  # what best.ckpt, tested and served, holds
        assert cfg.model[stage].checkpoint == ("last_epoch" if (experiment, stage) in COSINE else "best_val")


def test_paper_presets_follow_the_paper() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for rater in ("a1", "a2"):
            cfg = compose(config_name="train", overrides=[f"experiment=paper_{rater}"])
            assert cfg.data.rater == rater.upper() and list(cfg.cv.raters) == [rater.upper()]
            assert cfg.model.rootlet.trainer.max_epochs == 200 and cfg.model.grade.trainer.max_epochs == 100
            assert cfg.model.rootlet.module.optimizer.lr == 1e-4 and cfg.model.grade.module.width == 1.0
            assert cfg.model.detector.module.backbone == "resnet50_fpn"
            assert cfg.model.grade.balanced is True


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_sim"])
@pytest.mark.parametrize("debug", ["fdr", "overfit"])
def test_trainer_and_debug_groups_compose(trainer: str, debug: str) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"trainer={trainer}", f"debug={debug}"])
    assert cfg.trainer.accelerator in {"cpu", "gpu"}
    assert "debug_trainer" in cfg


def test_each_classifier_can_have_its_own_patch_geometry() -> None:
    from lumbar_lightning.engine.fold import stage_geometry

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=demo"])
    rootlet, grade = stage_geometry(cfg, "rootlet"), stage_geometry(cfg, "grade")
    assert rootlet.size == cfg.data.patch.size == 32 and grade.size == 40
    assert rootlet.margin == grade.margin == cfg.data.patch.margin
    # Both patches are squares in millimetres in this preset; data.patch (the baseline's) stays box-relative.
    assert grade.field_mm == rootlet.field_mm == 28
    assert cfg.data.patch.field_mm is None and stage_geometry(cfg, "baseline").field_mm is None
