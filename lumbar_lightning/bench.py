"""``make bench``: data-path speed as ratios measured in one run (absolute times alone prove little here).

Measured now: phantom generation (slices/s), ingestion first pass and cached pass (images/s), and a training
patch read from the cache against a naive dataset that calls ``pydicom.dcmread`` per item. The compute-efficiency,
framework-overhead and inference sections of the benchmark plan are not written yet.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.dicom import decode_pixels, normalise
from lumbar_lightning.data.phantom.cohort import PhantomCohort, PhantomConfig
from lumbar_lightning.data.transforms import PatchGeometry


def median_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn) for _ in range(repeats))


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(n_patients: int = 10, image_size: int = 320, items: int = 300) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ph"
        cohort = PhantomCohort.generate(PhantomConfig(n_patients=n_patients, image_size=image_size), root)
        out: dict[str, Any] = {"phantom_slices_per_s": cohort.n_images / cohort.seconds}
        first = _timed(lambda: LumbarDataset.ingest(root, Path(tmp) / "cache"))
        cached = median_time(lambda: LumbarDataset.ingest(root, Path(tmp) / "cache"))
        n = cohort.n_images
        out.update({"ingest_first_pass_images_per_s": n / first, "ingest_cached_images_per_s": n / cached})
        ds = LumbarDataset.ingest(root, Path(tmp) / "cache")
        rows = ds.labels.for_rater("A1").iloc[:items]
        geometry = PatchGeometry(32)
        paths = ds.images.set_index("sop_instance_uid")["path"]

        def cached_items() -> None:
            for r in rows.itertuples():
                geometry.crop(
                    ds.cache.get(r.sop_instance_uid), np.array([r.x_min, r.y_min, r.x_max, r.y_max])
                )

        def naive_items() -> None:
            for r in rows.itertuples():
                image = normalise(decode_pixels(pydicom.dcmread(paths[r.sop_instance_uid])))
                geometry.crop(image, np.array([r.x_min, r.y_min, r.x_max, r.y_max]))

        # A/B/A/B in one process: alternate the two so drift hits both alike.
        t_cached, t_naive = [], []
        for _ in range(3):
            t_cached.append(_timed(cached_items))
            t_naive.append(_timed(naive_items))
        out["patch_items_per_s_cached"] = len(rows) / statistics.median(t_cached)
        out["patch_items_per_s_naive_dcmread"] = len(rows) / statistics.median(t_naive)
        out["cached_over_naive"] = out["patch_items_per_s_cached"] / out["patch_items_per_s_naive_dcmread"]
        out["images"] = n
    return out


def main() -> None:
    small = "--small" in sys.argv
    result = run(n_patients=2 if small else 10, image_size=128 if small else 320, items=40 if small else 300)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:10.1f}")
    Path("bench.json").write_text(json.dumps(result, indent=2))
    print("wrote bench.json")


if __name__ == "__main__":
    main()
