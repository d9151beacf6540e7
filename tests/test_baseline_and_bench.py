"""The intensity baseline and the benchmark's data-path section, on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


@pytest.mark.slow  # make test-full: make bench runs every section itself; 50 s
def test_bench_smoke_reports_every_section_as_numbers(tmp_path: Path) -> None:
    """`make bench` in miniature, through its console app: every figure present and positive, ratios consistent,
    targets judged."""
    from lumbar_lightning.engine.bench import TARGETS, markdown_block

    cmd = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.bench",
        "small=true",
        f"out={tmp_path / 'bench.json'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "bench.json").read_text())
    for preset in ("demo", "paper"):
        for stage in ("detector", "rootlet", "grade"):
            for what in ("train_images_per_s", "gflop_per_image", "efficiency"):
                assert out[f"{preset}/{stage}/{what}"] > 0, (preset, stage, what)
    assert out["paper/grade/gflop_per_image"] > 10 * out["demo/grade/gflop_per_image"]  # width 1 vs 1/8
    keys = (
        "gemm_fp32_gflop_per_s",
        "overhead/fit_over_plain",
        "data/loader_images_per_s",
        "data/cached_over_naive",
        "data/naive_dcmread_images_per_s",
        "phantom/slices_per_s",
        "ingest/first_pass_images_per_s",
        "ingest/cached_images_per_s",
        "inference/demo/seconds_per_study",
        "inference/peak_rss_mb",
    )
    for key in keys:
        assert out[key] > 0, key
    assert out["overhead/ratio_spread"] >= 0
    assert out["numerics/pinned_step_seconds"] > 0 and out["numerics/native_step_seconds"] > 0
    assert (
        out["numerics/pinned_over_native"]
        == out["numerics/pinned_step_seconds"] / out["numerics/native_step_seconds"]
    )
    assert out["data/loader_over_model"] == out["data/loader_images_per_s"] / out["data/model_images_per_s"]
    assert set(out["targets"]) == set(TARGETS)
    for key, target in out["targets"].items():
        if target["value"] is not None:
            assert target["met"] == (
                target["value"] >= TARGETS[key][1]
                if TARGETS[key][0] == ">="
                else target["value"] <= TARGETS[key][1]
            )
    block = markdown_block(out)
    assert block.startswith("<!-- results:begin -->") and all(f"| {k} |" in block for k in TARGETS)


def test_ab_rounds_alternate_the_order_and_pair_the_ratios() -> None:
    import time

    from lumbar_lightning.engine.bench import ab_rounds

    calls: list[str] = []

    def a() -> None:
        calls.append("a")
        time.sleep(0.01)

    def b() -> None:
        calls.append("b")
        time.sleep(0.02)

    ta, tb, ratio = ab_rounds(a, b, rounds=4)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then AB, BA, AB, BA
    assert len(ta) == len(tb) == 4 and all(y > x for x, y in zip(ta, tb, strict=True))
    assert 1.5 < ratio < 2.5
