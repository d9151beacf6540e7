"""Hydra all the way down: a callback, a datamodule argument and an augmentation swapped in YAML alone, each
with its effect seen (no code of the project or of the test builds the swapped object)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CV
from hydra import compose, initialize_config_dir

from lumbar_lightning.conf import CONF_DIR
from lumbar_lightning.engine.fold import patch_datamodule
from lumbar_lightning.layout import RunLayout


def test_a_callback_and_a_datamodule_argument_swapped_in_yaml_take_effect(
    tiny_phantom: Path, tmp_path: Path
) -> None:
    overrides = [
        # one more callback, a Lightning class the project never names; its ??? monitor is the stage's metric.
        # A threshold every accuracy passes: each stage stops after its first validation.
        "+callbacks.early_stopping={_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: '???', "
        "mode: max, stopping_threshold: -1.0, check_on_train_epoch_end: false}",
        "callbacks.rng_state=null",  # and one removed
        "model.grade.trainer.max_epochs=3",
        "model.grade.samples_per_epoch=48",  # datamodule arguments: 48 patches a grade epoch in batches of 16
        "model.grade.batch_size=16",
        "baseline=false",
    ]
    cmd = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.train",
        f"data.data_dir={tiny_phantom}",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
        *TINY_CV,
        *overrides,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    fold = RunLayout(tmp_path).fold("A1", 0)
    last = torch.load(fold.last("grade"), map_location="cpu", weights_only=True)
    assert last["epoch"] == 0 and last["global_step"] == 3  # stopped after 1 of 3 epochs; 48 / 16 batches
    assert any("EarlyStopping" in key for key in last["callbacks"])
    assert not any("RngState" in key for key in last["callbacks"])
    assert fold.best("grade").is_file() and fold.metrics.is_file()


#: Each augmentation preset with its affine and noise off, and the override that sets its flip probability.
AUGMENT_SWAPS = {
    "cv2_warp": (["data.augment.p_affine=0", "data.augment.p_noise=0"], "data.augment.hflip={}"),
    "albumentations": (
        ["data.augment.compose.transforms.0.p=0", "data.augment.compose.transforms.2.p=0"],
        "data.augment.compose.transforms.1.p={}",
    ),
}


@pytest.mark.parametrize("preset", sorted(AUGMENT_SWAPS))
def test_an_augmentation_swapped_in_yaml_changes_the_training_patches(
    preset: str, tiny_phantom: Path
) -> None:
    """The group chosen and one transform's probability set in YAML alone: every training patch mirrored."""
    still, flip = AUGMENT_SWAPS[preset]

    def first_patches(p_flip: int) -> np.ndarray:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[
                    f"data.data_dir={tiny_phantom}",
                    *TINY_CV,
                    f"data/augment={preset}",
                    *still,
                    flip.format(p_flip),
                ],
            )
        dm = patch_datamodule(cfg, "grade", 0, "A1")
        dm.setup()
        return np.stack([dm.sets["train"][(i, 0)]["image"].numpy() for i in range(4)])

    kept, mirrored = first_patches(0), first_patches(1)
    assert not np.allclose(kept, mirrored)
    np.testing.assert_allclose(mirrored, kept[..., ::-1], atol=1e-6)  # every patch mirrored, nothing else
