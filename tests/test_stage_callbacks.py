"""A stage's own callbacks (``model.<stage>.callbacks``): weight averaging for one stage, its checkpoints and
the tracked best that run_fold reads back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import GRADE_EMA, TINY_CV


def test_weight_averaging_of_one_stage_keeps_its_tracked_best(tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "A1" / "fold_0"
    metrics = _train_fold(tiny_phantom, out, GRADE_EMA)
    stages = out / "checkpoints"
    grade_last = torch.load(stages / "grade" / "last.ckpt", weights_only=True)
    grade_best = torch.load(stages / "grade" / "best.ckpt", weights_only=True)
    rootlet_last = torch.load(stages / "rootlet" / "last.ckpt", weights_only=True)
    # only the grade was averaged: its checkpoints hold the average, the trained weights beside it
    assert "current_model_state" in grade_last and "current_model_state" in grade_best
    assert "current_model_state" not in rootlet_last
    averaged, trained = grade_last["state_dict"], grade_last["current_model_state"]
    conv = next(k for k in trained if k.endswith("weight") and trained[k].ndim == 4)
    assert not torch.equal(averaged[conv], trained[conv])
    # the tracked best is the trained module's (the average's own copy never tracks), and it is what is reported
    tracked = float(trained["val_best.max_value"])
    assert 0.0 < tracked <= 1.0
    done = json.loads((stages / "grade" / "done.json").read_text())
    assert done["best_val"] == metrics["grade"]["gt_box"]["best_val"] == tracked


def _train_fold(tiny_phantom: Path, out: Path, *overrides: str) -> dict:
    """Fold 0 of rater A1 on the tiny phantom, with TINY_CV's small settings and the test's own overrides."""
    from hydra import compose, initialize_config_dir

    from lumbar_lightning.conf import CONF_DIR
    from lumbar_lightning.engine.fold import run_fold

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"data.data_dir={tiny_phantom}", "logger=none", "threads=1", *TINY_CV, *overrides],
        )
    return run_fold(cfg, 0, "A1", out)


def _grade_checkpoint_epochs(tiny_phantom: Path, out: Path, *overrides: str) -> tuple[dict, dict]:
    _train_fold(tiny_phantom, out, *overrides)
    grade = out / "checkpoints" / "grade"
    return (
        torch.load(grade / "best.ckpt", weights_only=True),
        torch.load(grade / "last.ckpt", weights_only=True),
    )


def test_last_epoch_checkpoint_tests_the_final_weights(tiny_phantom: Path, tmp_path: Path) -> None:
    # The tracked best never falls, so with mode=min the best-validation checkpoint stays the first epoch's:
    # the two choices then name different epochs whatever the training does.
    first_epoch = (
        "model.grade.trainer.max_epochs=2",
        "callbacks.best_checkpoint.monitor=val/acc_best",
        "callbacks.best_checkpoint.mode=min",
    )
    best, last = _grade_checkpoint_epochs(tiny_phantom, tmp_path / "best_val", *first_epoch)
    assert (best["epoch"], last["epoch"]) == (0, 1)
    best, last = _grade_checkpoint_epochs(
        tiny_phantom, tmp_path / "last_epoch", *first_epoch, "model.grade.checkpoint=last_epoch"
    )
    assert best["epoch"] == last["epoch"] == 1
    # the tested weights are the final ones; only the fitted temperature was written into best.ckpt
    weights = {k: v for k, v in best["state_dict"].items() if k != "temperature"}
    assert weights.keys() == {k for k in last["state_dict"] if k != "temperature"}
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in weights.items())
    assert float(last["state_dict"]["temperature"]) == 1.0 != float(best["state_dict"]["temperature"])


def test_a_misspelt_checkpoint_choice_fails_before_training(tiny_phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.grade\.checkpoint='last'.*best_val, last_epoch"):
        _grade_checkpoint_epochs(tiny_phantom, tmp_path, "model.grade.checkpoint=last")
    assert not (tmp_path / "checkpoints").exists()  # not even the detector trained


def test_last_epoch_without_a_last_checkpoint_says_so(
    tiny_phantom: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lumbar_lightning"):
        _train_fold(
            tiny_phantom, tmp_path, "callbacks.last_checkpoint=null", "model.grade.checkpoint=last_epoch"
        )
    said = [r.getMessage() for r in caplog.records if "checkpoint=last_epoch but no" in r.getMessage()]
    assert len(said) == 1 and "grade" in said[0]  # told once, for the one stage that asked
    assert (tmp_path / "checkpoints" / "grade" / "best.ckpt").exists()  # the best validation epoch is tested
