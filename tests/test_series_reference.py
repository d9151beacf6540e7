"""``series_reference``: the grader sees, beside each patch, its series' brightest (freest) rootlet-level canal cut at
the patch's scale; the reference is chosen the same way in training (rater's levels and boxes) and in the Pipeline
(its own rootlet calls and boxes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from conftest import TINY_CV, RecordingNet
from torch import nn

from lumbar_lightning.data.augment import PaperAugment
from lumbar_lightning.data.datamodules import PatchDataModule, fold_rows
from lumbar_lightning.data.series import canal_brightness, reference_slices
from lumbar_lightning.data.transforms import PatchGeometry
from lumbar_lightning.inference.pipeline import Pipeline
from lumbar_lightning.models.stages import CanalDetector, GradeClassifier, RootletClassifier


def _box(x0: float, y0: float, side: float) -> list[float]:
    return [x0, y0, x0 + side, y0 + side]


def test_reference_is_the_brightest_rootlet_canal_of_each_series() -> None:
    series = np.array(["a", "a", "a", "b", "b", "c"])
    brightness = np.array([0.9, 0.4, 0.6, 0.2, 0.3, 0.1])
    rootlet = np.array([False, True, True, False, False, True])
    # a: the brightest is a cord slice, so the brighter rootlet slice; b: no rootlet slice, so its brightest.
    np.testing.assert_array_equal(reference_slices(series, brightness, rootlet), [2, 2, 2, 4, 4, 5])
    with pytest.raises(ValueError, match="differ in length"):
        reference_slices(series[:2], brightness, rootlet)


def test_canal_brightness_is_the_mean_of_the_central_half() -> None:
    patches = np.zeros((2, 8, 8), np.float32)
    patches[0, 2:6, 2:6] = 1.0  # exactly the central half per side
    patches[1, :, :2] = 5.0  # bright outside it only
    np.testing.assert_allclose(canal_brightness(patches), [1.0, 0.0])


def test_scale_box_sets_the_patch_scale() -> None:
    yy, xx = np.mgrid[:200, :200]
    image = ((xx - 100) ** 2 + (yy - 100) ** 2 <= 20**2).astype(
        np.float32
    )  # a disc of radius 20 at (100, 100)
    geometry = PatchGeometry(size=40, margin=0.0)
    own = geometry.crop(image, np.array(_box(80, 80, 40)))
    half_scale = geometry.crop(image, np.array(_box(80, 80, 40)), scale_box=np.array(_box(0, 0, 80)))
    # Cut at its own box the disc spans the patch; at a box twice the size, half of it.
    assert own[20].sum() == pytest.approx(40, abs=1.5)
    assert half_scale[20].sum() == pytest.approx(20, abs=1.5)


@pytest.fixture(scope="module")
def reference_data(tiny_phantom: Path) -> PatchDataModule:
    dm = PatchDataModule(
        task="grade",
        patch=PatchGeometry(24),
        data_dir=str(tiny_phantom),
        num_folds=4,
        series_reference=True,
        batch_size=8,
        augment=PaperAugment(),
    )
    dm.setup()
    return dm


def test_data_module_pairs_each_patch_with_its_series_reference(reference_data: PatchDataModule) -> None:
    dm = reference_data
    assert dm.dataset is not None
    series = dm.dataset.images.set_index("sop_instance_uid")["series_instance_uid"]
    labelled = fold_rows(dm.dataset, dm.folds, 0, "A1")["val"]  # type: ignore[arg-type]
    own = np.stack(
        [
            dm.dataset.patch(u, tuple(b), dm.geometry, 1.0)
            for u, b in zip(
                labelled["sop_instance_uid"],
                labelled[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float),
                strict=True,
            )
        ]
    )
    labelled = labelled.assign(series=labelled["sop_instance_uid"].map(series), bright=canal_brightness(own))
    brightest = labelled[labelled["level"] == "rootlet"].sort_values("bright").groupby("series").tail(1)
    expected = dict(zip(brightest["series"], brightest["sop_instance_uid"], strict=True))
    rows = dm.rows["val"]
    assert len(rows) and (rows["level"] == "rootlet").all()
    assert [expected[series[u]] for u in rows["sop_instance_uid"]] == rows["ref_uid"].tolist()
    # Channel 1 is the reference image around its own box, at the scale of the row's box.
    r = rows.iloc[min(3, len(rows) - 1)]
    item = dm.sets["val"][rows.index.get_loc(r.name)]
    assert item["image"].shape == (2, 24, 24)
    ref_box = r[["ref_x_min", "ref_y_min", "ref_x_max", "ref_y_max"]].to_numpy(float)
    own_box = r[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
    want = dm.geometry.crop(dm.dataset.cache.get(r.ref_uid), ref_box, 1.0, scale_box=own_box)
    np.testing.assert_allclose(item["image"][1].numpy(), want, atol=1e-6)


def test_augmentation_moves_both_channels_together(reference_data: PatchDataModule) -> None:
    train = reference_data.sets["train"]
    rows = reference_data.rows["train"]
    own = np.flatnonzero((rows["ref_uid"] == rows["sop_instance_uid"]).to_numpy())
    assert len(own), "every series has a brightest slice, its own reference"
    image = train[(int(own[0]), 3)]["image"]  # (index, epoch): an augmented draw
    # Same slice, same box, same scale: identical channels, so one warp and one noise draw for both.
    torch.testing.assert_close(image[0], image[1])
    other = np.flatnonzero((rows["ref_uid"] != rows["sop_instance_uid"]).to_numpy())
    assert not torch.equal(*train[(int(other[0]), 3)]["image"])


class _CornerDark(nn.Module):
    """Rootlet logit -6 (cord) when the patch's corner pixel is dark, +6 otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, 0, 0, 0] < 0.05, -6.0, 6.0)[:, None]


def test_pipeline_uses_the_series_reference_of_its_own_rootlet_calls() -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((96, 96), dtype=np.float32) for _ in range(5)]
    images[1][:20, :20] = 0.0  # a dark corner: called cord ...
    images[1][30:50, 30:50] += 0.5  # ... although its canal is the brightest of series a
    images[3] = images[3] + 0.4  # the brightest canal of series b
    boxes = np.array(
        [_box(30, 30, 20), _box(20, 20, 40), _box(30, 30, 24), _box(28, 28, 30), _box(35, 35, 10)],
        dtype=np.float32,
    )
    rootlet = RootletClassifier(width=0.125)
    rootlet.net = _CornerDark()
    grader = GradeClassifier(width=0.125, series_reference=True)
    grader.net = RecordingNet()
    geometry = PatchGeometry(16)
    pipe = Pipeline(
        CanalDetector(image_size=64).predictor, rootlet.predictor, grader.predictor, geometry, batch_size=2
    )
    own = np.stack([geometry.crop(im, b, 1.0) for im, b in zip(images, boxes, strict=True)])
    bright = canal_brightness(own)
    assert bright[1] > bright[0] and bright[3] > max(bright[2], bright[4])
    preds = pipe.predict(images, boxes=boxes, series=["a", "a", "b", "b", "b"])
    assert [p.level for p in preds] == ["rootlet", "cord", "rootlet", "rootlet", "rootlet"]
    seen = torch.cat(grader.net.seen)
    assert seen.shape == (5, 2, 16, 16)
    for i, ref in enumerate([0, 0, 3, 3, 3]):
        np.testing.assert_allclose(seen[i, 0].numpy(), own[i], atol=1e-6)
        want = geometry.crop(images[ref], boxes[ref], 1.0, scale_box=boxes[i])
        np.testing.assert_allclose(seen[i, 1].numpy(), want, atol=1e-6)
    # Without series ids the images are one series: the brightest rootlet canal of all (image 3).
    grader.net.seen.clear()
    pipe.predict(images, boxes=boxes)
    want = geometry.crop(images[3], boxes[3], 1.0, scale_box=boxes[0])
    np.testing.assert_allclose(torch.cat(grader.net.seen)[0, 1].numpy(), want, atol=1e-6)


def test_a_series_reference_fold_trains_and_lumbar_predict_reproduces_its_test_predictions(
    tiny_phantom: Path, tmp_path: Path
) -> None:
    """End to end: `lumbar-train` with the option, then `lumbar-predict` on one test patient's series gives the
    fold's own chained probabilities (the reference is chosen the same way in both)."""
    run = tmp_path / "run"
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "lumbar_lightning.cli.train",
            f"data.data_dir={tiny_phantom}",
            "logger=none",
            *TINY_CV,
            "model.grade.module.series_reference=true",
            "model.grade.module.flip_tta=true",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    fold = run / "A1" / "fold_0"
    cv_preds = pd.read_csv(fold / "predictions.csv", keep_default_na=False)
    patient_dirs = sorted((tiny_phantom / "dicom").iterdir())
    uids = set(cv_preds["sop_instance_uid"])
    source = next(d for d in patient_dirs if pydicom.dcmread(next(d.glob("*.dcm"))).SOPInstanceUID in uids)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lumbar_lightning.cli.predict",
            "progress=false",
            f"run_dir={fold}",
            f"input={source}",
            f"out_dir={out}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("sop_instance_uid")
    theirs = cv_preds.set_index("sop_instance_uid").loc[ours.index.intersection(cv_preds["sop_instance_uid"])]
    assert len(theirs) >= 10
    cols = ["rootlet_prob", "p_A", "p_B", "p_C", "p_D", "pred_grade"]
    pd.testing.assert_frame_equal(ours.loc[theirs.index, cols], theirs[cols], check_dtype=False, atol=2e-4)
