"""A deliberately simple grader: logistic regression on intensity statistics of the rater's canal box.

It answers "can a trivial rule read the grade off the phantom?" with the same patient-level folds as the CNN.
``lumbar-intensity-baseline data_dir=DIR rater=A1`` prints its cross-validated agreement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.labels import grades
from lumbar_lightning.evaluation.agreement import agreement

FEATURES = ("mean", "std", "p10", "p50", "p90", "bright_fraction", "dark_fraction", "box_area_mm2", "aspect")


def box_features(image: np.ndarray, box: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Global statistics of the box's pixels, plus its physical size and shape."""
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    region = image[max(0, y0) : max(y0 + 1, y1), max(0, x0) : max(x0 + 1, x1)].astype(np.float32)
    p10, p50, p90 = np.percentile(region, [10, 50, 90])
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    return np.array(
        [
            region.mean(),
            region.std(),
            p10,
            p50,
            p90,
            (region > 0.7).mean(),
            (region < 0.3).mean(),
            w * h * pixel_mm**2,
            w / h,
        ],
        dtype=np.float64,
    )


def intensity_baseline(
    dataset: LumbarDataset, rater: str = "A1", num_folds: int = 10, seed: int = 0
) -> dict[str, Any]:
    """Cross-validated grade agreement of the baseline with ``rater`` on its graded rootlet images."""
    rows = dataset.labels.for_rater(rater)
    rows = rows[(rows["level"] == "rootlet") & (rows["grade"] != "")]
    meta = dataset.images.set_index("sop_instance_uid")
    x = np.stack(
        [
            box_features(
                dataset.cache.get(r.sop_instance_uid),
                np.array([r.x_min, r.y_min, r.x_max, r.y_max]),
                float(meta.at[r.sop_instance_uid, "pixel_spacing_col"]),
            )
            for r in rows.itertuples(index=False)
        ]
    )
    y = rows["grade"].to_numpy()
    parts = rows["sop_instance_uid"].map(meta["patient"]).map(dataset.folds(num_folds, seed).parts).to_numpy()
    predicted = np.empty(len(y), dtype=object)
    for k in range(num_folds):
        train, test = parts != k, parts == k
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        model.fit(x[train], y[train])
        predicted[test] = model.predict(x[test])
    result = agreement(y, predicted, grades())
    result["features"] = list(FEATURES)
    result["rater"] = rater
    return result
