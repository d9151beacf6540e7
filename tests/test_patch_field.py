"""``patch.field_mm``: a patch that is a fixed square in millimetres, so its scale follows the anatomy, not the box a
rater or the detector drew; images without a PixelSpacing are named before any training starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import write_tiny_dataset

from lumbar_lightning.data.datamodules import PatchDataModule
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.transforms import PatchGeometry


def _disc(radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:200, :200]
    return ((xx - 100) ** 2 + (yy - 100) ** 2 <= radius**2).astype(np.float32)


def _tiny_dataset_with_a_slice_without_pixel_spacing(tmp_path: Path) -> tuple[Path, Path]:
    root = write_tiny_dataset(tmp_path / "ds", n_patients=8)
    victim = sorted((root / "dicom").rglob("*.dcm"))[5]
    ds = pydicom.dcmread(victim)
    del ds.PixelSpacing
    ds.save_as(victim)
    return root, victim


def test_a_millimetre_field_keeps_the_scale_whatever_the_box() -> None:
    image = _disc(20)
    # 40 mm at 0.5 mm a pixel is 80 px: the disc (40 px across) spans half the patch.
    field = PatchGeometry(size=40, margin=0.0, field_mm=40.0)
    tight, loose = np.array([80, 80, 120, 120]), np.array([70, 70, 130, 130])
    a, b = field.crop(image, tight, pixel_mm=0.5), field.crop(image, loose, pixel_mm=0.5)
    np.testing.assert_allclose(a, b)
    assert a[20].sum() == pytest.approx(20, abs=1.5)
    # Box-relative, the same two boxes give the disc two sizes; in coarser pixels the same disc is a larger canal.
    relative = PatchGeometry(size=40, margin=0.0)
    assert relative.crop(image, tight)[20].sum() == pytest.approx(40, abs=1.5)
    assert relative.crop(image, loose)[20].sum() == pytest.approx(40 * 40 / 60, abs=1.5)
    assert field.crop(image, tight, pixel_mm=1.0)[20].sum() == pytest.approx(40, abs=1.5)
    with pytest.raises(ValueError, match="pixel spacing"):
        field.crop(image, tight, pixel_mm=float("nan"))


def test_a_millimetre_field_names_the_images_without_pixel_spacing(tmp_path: Path) -> None:
    root, victim = _tiny_dataset_with_a_slice_without_pixel_spacing(tmp_path)

    def module(field_mm: float | None) -> PatchDataModule:
        geometry = PatchGeometry(16, field_mm=field_mm)
        return PatchDataModule(task="rootlet", patch=geometry, data_dir=str(root), num_folds=4, batch_size=4)

    with pytest.raises(DataContractError, match="PixelSpacing") as err:
        module(20.0).setup()
    assert str(victim) in str(err.value) and "field_mm=null" in str(err.value)
    dm = module(None)  # box-relative patches never need it
    dm.setup()
    assert sum(len(s) for s in dm.sets.values()) == 8 * 4


def test_reading_a_labelled_set_names_the_images_without_pixel_spacing_before_grading(tmp_path: Path) -> None:
    """``predict_test_images`` (a fold's test set, ``lumbar-evaluate``) checks before the pipeline sees an image."""
    from types import SimpleNamespace

    from lumbar_lightning.data.datamodules import load_dataset
    from lumbar_lightning.inference.labelled import predict_test_images

    root, victim = _tiny_dataset_with_a_slice_without_pixel_spacing(tmp_path)
    dataset = load_dataset(str(root), None, "lumbar-lightning")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pipeline was called before the check")

    pipeline = SimpleNamespace(
        geometries=(PatchGeometry(16), PatchGeometry(16, field_mm=20.0)), predict=never
    )
    patients = dataset.images["patient"].unique()
    with pytest.raises(DataContractError, match="field_mm=20 cuts patches") as err:
        predict_test_images(pipeline, dataset, patients, 0, "A1")  # type: ignore[arg-type]
    assert str(victim) in str(err.value)
