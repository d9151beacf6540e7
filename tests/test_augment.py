"""Training augmentation (data/augment=...): both augmenters, built from their YAML, are seeded per item, move
the canal box with the image, draw the configured rates independently, and give the same batches with any
number of loader workers."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from conftest import TINY_CV
from hydra import compose, initialize_config_dir

from lumbar_lightning.conf import CONF_DIR
from lumbar_lightning.data.augment import AlbumentationsAugment, PaperAugment
from lumbar_lightning.engine.fold import patch_datamodule

AUGMENTERS = ("cv2_warp", "albumentations")
#: Where each preset keeps the probability of its affine warp, its flip and its noise.
PROBABILITY_KEYS = {
    "cv2_warp": ("p_affine", "hflip", "p_noise"),
    "albumentations": tuple(f"compose.transforms.{i}.p" for i in range(3)),
}


def config(name: str, *overrides: str) -> object:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"data/augment={name}", *overrides])


def augmenter(name: str, affine: float, flip: float, noise: float, *overrides: str) -> object:
    """The preset's augmenter from its YAML, with the three probabilities set."""
    keys = PROBABILITY_KEYS[name]
    probs = [f"data.augment.{k}={v}" for k, v in zip(keys, (affine, flip, noise), strict=True)]
    return hydra.utils.instantiate(config(name, *probs, *overrides).data.augment)


@pytest.mark.parametrize("name", AUGMENTERS)
def test_augment_is_seeded_and_moves_the_box_with_the_image(name: str) -> None:
    """Same seed, same warp; the returned box is where the boxed content went (rotation, scale, shift, flip)."""
    augment = augmenter(name, 1.0, 0.5, 0.0)
    image = np.zeros((96, 96), dtype=np.float32)
    box = np.array([[30.0, 40.0, 50.0, 60.0]], dtype=np.float32)
    image[40:60, 30:50] = 1.0
    a, box_a = augment(image, 7, boxes=box)
    b, box_b = augment(image, 7, boxes=box)
    assert np.array_equal(a, b) and np.array_equal(box_a, box_b)
    assert not np.array_equal(a, augment(image, 8, boxes=box)[0])
    flipped = 0
    for seed in range(40):
        out, moved = augment(image, seed, boxes=box)
        ys, xs = np.nonzero(out > 0.5)
        seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
        assert np.abs(seen - moved[0]).max() <= 1.5, (seed, seen, moved)
        flipped += moved[0, [0, 2]].mean() > 48  # the square sits left of centre; a flip takes it right
    assert 8 <= flipped <= 32


@pytest.mark.parametrize("name", AUGMENTERS)
def test_augment_crops_to_the_patch_and_flips_and_adds_noise_as_configured(name: str) -> None:
    patch = np.random.default_rng(0).random((44, 44), dtype=np.float32)
    centre = patch[6:38, 6:38]
    np.testing.assert_allclose(augmenter(name, 0, 0, 0)(patch, 1, out_size=32)[0], centre, atol=1e-6)
    mirror = augmenter(name, 0, 1, 0)(patch, 1, out_size=32)[0]
    np.testing.assert_allclose(mirror, centre[:, ::-1], atol=1e-6)
    noisy = augmenter(name, 0, 0, 1)  # composed once: each call reseeds it from its seed argument
    residuals = np.stack([noisy(patch, s, out_size=32)[0] - centre for s in range(40)])
    stds = residuals.std(axis=(1, 2))
    assert abs(residuals.mean()) < 0.002 and stds.max() <= 0.031 and stds.min() < 0.01 < stds.max()


def test_cv2_warp_draws_the_configured_rates() -> None:
    cfg = PaperAugment()
    draws = [cfg.draw(np.random.default_rng(s)) for s in range(3000)]
    for key, rate in (("affine", cfg.p_affine), ("flip", cfg.hflip), ("noise", cfg.p_noise)):
        assert abs(np.mean([d[key] for d in draws]) - rate) < 0.03, key
    both = np.mean([d["affine"] and d["flip"] for d in draws])
    assert abs(both - cfg.p_affine * cfg.hflip) < 0.03
    angles = np.array([d["angle"] for d in draws])
    assert angles.min() >= -cfg.rotate_deg and angles.max() <= cfg.rotate_deg
    assert angles.std() > cfg.rotate_deg / 2


def test_albumentations_draws_each_transform_at_its_rate_and_independently() -> None:
    """The per-item seed reaches every transform through one shared generator: each fires at its own rate, and
    an affine and a flip fire together at the product of their rates (one seed per transform, as
    ``Compose.set_random_seed`` gives, would tie their first draws together)."""
    augment = augmenter("albumentations", 0.8, 0.5, 0.5, "+data.augment.compose.save_applied_params=true")
    assert isinstance(augment, AlbumentationsAugment)
    image = np.random.default_rng(0).random((40, 40), dtype=np.float32)
    fired = []
    for seed in range(2000):
        augment.reseed(seed)
        applied = {t[0] for t in augment.compose(image=image)["applied_transforms"]}
        fired.append([n in applied for n in ("Affine", "HorizontalFlip", "GaussNoise")])
    fired = np.array(fired)
    np.testing.assert_allclose(fired.mean(0), [0.8, 0.5, 0.5], atol=0.035)
    assert abs((fired[:, 0] & fired[:, 1]).mean() - 0.4) < 0.035
    assert abs((fired[:, 1] & fired[:, 2]).mean() - 0.25) < 0.035


def test_albumentations_without_box_params_says_so_for_the_detector() -> None:
    augment = augmenter("albumentations", 1, 0, 0, "data.augment.compose.bbox_params=null")
    image = np.zeros((64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="bbox_params"):
        augment(image, 0, boxes=np.array([[10.0, 10.0, 30.0, 30.0]]))


@pytest.mark.parametrize("name", AUGMENTERS)
def test_training_batches_do_not_depend_on_the_loader_worker_count(name: str, tiny_phantom: Path) -> None:
    """Each item is augmented from (seed, epoch, index), so 0 and 2 worker processes load the same batches."""

    def batches(workers: int) -> list[torch.Tensor]:
        cfg = config(name, f"data.data_dir={tiny_phantom}", *TINY_CV, f"data.num_workers={workers}")
        dm = patch_datamodule(cfg, "grade", 0, "A1")
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        return [b["image"] for _, b in zip(range(3), loader, strict=False)]

    alone, workers = batches(0), batches(2)
    assert all(torch.equal(a, b) for a, b in zip(alone, workers, strict=True))
    assert not torch.equal(alone[0], batches(0)[1])
