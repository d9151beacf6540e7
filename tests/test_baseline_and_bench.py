"""The intensity baseline and the benchmark's data-path section, on tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lumbar_lightning.bench import run as run_bench
from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.evaluation.baseline import FEATURES, box_features, intensity_baseline


def test_box_features_on_a_known_box() -> None:
    image = np.zeros((20, 20), np.float32)
    image[5:10, 4:14] = 1.0  # a bright 10 x 5 block
    f = dict(zip(FEATURES, box_features(image, np.array([4, 5, 14, 10]), pixel_mm=0.5), strict=True))
    assert f["mean"] == 1.0 and f["bright_fraction"] == 1.0 and f["dark_fraction"] == 0.0
    assert f["box_area_mm2"] == 50 * 0.25 and f["aspect"] == 2.0


def test_intensity_baseline_is_cross_validated_by_patient(tiny_phantom: Path, tmp_path: Path) -> None:
    ds = LumbarDataset.ingest(tiny_phantom, tmp_path / "cache")
    res = intensity_baseline(ds, "A1", num_folds=4)
    graded = ds.labels.for_rater("A1")
    graded = graded[(graded["level"] == "rootlet") & (graded["grade"] != "")]
    assert res["n"] == len(graded)
    assert int(np.sum(res["confusion_matrix"])) == len(graded)
    assert 0.0 <= res["f1_macro"] <= 1.0 and 0.0 <= res["accuracy"] <= 1.0


def test_bench_data_path_section_reports_ratios() -> None:
    out = run_bench(n_patients=2, image_size=96, items=20)
    for key in ("phantom_slices_per_s", "ingest_first_pass_images_per_s", "ingest_cached_images_per_s",
                "patch_items_per_s_cached", "patch_items_per_s_naive_dcmread", "cached_over_naive"):  # fmt: skip
        assert out[key] > 0, key
    assert (
        out["cached_over_naive"] == out["patch_items_per_s_cached"] / out["patch_items_per_s_naive_dcmread"]
    )
    assert out["images"] >= 30
