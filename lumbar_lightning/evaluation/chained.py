"""Agreement of the chained pipeline (detector, then level, then grade) with one rater, per fold."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lumbar_lightning.data.labels import LEVEL_INDEX, grades
from lumbar_lightning.evaluation.agreement import agreement


def chained_metrics(predictions: pd.DataFrame, rater: str, balanced: bool = False) -> tuple[dict, dict]:
    """Rootlet/cord and grade agreement of the chained pipeline with ``rater`` on the images the rater labelled.

    The grade is compared where both the rater and the pipeline call the slice rootlet level (both have a grade).
    """
    level_col, grade_col = f"level_{rater}", f"grade_{rater}"
    pred_grade = "pred_grade_balanced" if balanced else "pred_grade"
    labelled = predictions[predictions[level_col] != ""]
    rootlet = agreement(labelled[level_col], labelled["pred_level"], list(LEVEL_INDEX))
    graded = labelled[(labelled[grade_col] != "") & (labelled[pred_grade] != "")]
    grade = agreement(graded[grade_col], graded[pred_grade], grades())
    grade["coverage"] = float(len(graded) / max(1, (labelled[grade_col] != "").sum()))
    return rootlet, grade


def record_chained(metrics: dict[str, Any], predictions: pd.DataFrame, rater: str) -> dict[str, Any]:
    """Write a fold's chained entries into its ``metrics`` (``rootlet.chained`` where the run has the level stage,
    ``grade.chained`` and ``grade.chained_balanced``): after its training, and when it is read again."""
    level, metrics["grade"]["chained"] = chained_metrics(predictions, rater)
    if "rootlet" in metrics:
        metrics["rootlet"]["chained"] = level
    metrics["grade"]["chained_balanced"] = chained_metrics(predictions, rater, balanced=True)[1]
    return metrics
