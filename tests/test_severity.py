"""Severity-aware agreement: gross errors (two grades or more apart) and per-grade recall, on known cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from lumbar_lightning.data.labels import GRADES
from lumbar_lightning.evaluation.agreement import severity
from lumbar_lightning.evaluation.report import render_report


def test_gross_errors_and_recall_on_a_known_case() -> None:
    truth = ["A", "A", "B", "C", "D", "D", "C", "B"]
    other = ["A", "C", "B", "A", "B", "D", "D", "A"]
    # gross: A->C (2), C->A (2), D->B (2); B->A and C->D are one grade apart
    out = severity(truth, other, GRADES)
    assert out["gross_errors"] == 3
    assert out["gross_error_rate"] == pytest.approx(3 / 8)
    assert out["recall_per_class"] == {"A": 0.5, "B": 0.5, "C": 0.0, "D": 0.5}


def test_a_grade_nobody_has_gets_no_recall() -> None:
    out = severity(["A", "B"], ["A", "A"], GRADES)
    assert out["gross_errors"] == 0 and out["recall_per_class"]["B"] == 0.0
    assert math.isnan(out["recall_per_class"]["D"])


def test_cv_summary_and_report_carry_them(tmp_path: Path) -> None:
    """Through the summary path (pair_table, then the report), on a hand-made predictions frame."""
    import pandas as pd

    from lumbar_lightning.evaluation.study import pair_table

    frame = pd.DataFrame({
        "sop_instance_uid": list("abcdef"), "patient": ["p1", "p1", "p2", "p2", "p3", "p3"],
        "level_A1": ["rootlet"] * 6, "grade_A1": ["A", "B", "C", "D", "D", "A"],
        "level_C1": ["rootlet"] * 6, "grade_C1": ["A", "B", "A", "B", "D", "D"],
    })  # fmt: skip
    row = pair_table(frame, "grade")["A1-C1"]
    assert row["gross_errors"] == 3 and row["recall_per_class"]["D"] == pytest.approx(0.5)
    summary = {"rootlet": {}, "grade": {"A1-C1": row}, "grade_distribution": {}, "per_level": {"rootlet": {}, "grade": {}},
               "paper": {"grade_distribution": {}}, "per_fold": {}}  # fmt: skip
    report = render_report(json.loads(json.dumps(summary, default=float)))
    assert "| A1-C1 | 3 | 50.0 | 50.0 | 100.0 | 0.0 | 50.0 |" in report


def test_worst_cases_put_gross_errors_first_then_confidence() -> None:
    from lumbar_lightning.evaluation.figures import worst_cases

    def row(uid: str, pred: str, truth: str, conf: float, a1: str = "A") -> dict[str, object]:
        probs = {f"p_{g}": (conf if g == pred else (1 - conf) / 3) for g in "ABCD"}
        return {
            "sop_instance_uid": uid,
            "trained_on": "A1",
            "grade_A1": a1,
            "grade_truth": truth,
            "pred_grade": pred,
            **probs,
        }

    frame = pd.DataFrame(
        [
            row("one-off", "B", "A", 0.9),
            row("two-off", "C", "A", 0.6),
            row("right", "A", "A", 0.99),
            row("three-off", "A", "D", 0.5),
            row("cord", "", "A", 0.9),
            row("one-off-2", "B", "C", 0.95),
        ]
    )
    cases = worst_cases(frame)
    assert cases["sop_instance_uid"].tolist() == ["three-off", "two-off", "one-off-2", "one-off"]
    assert cases["distance"].tolist() == [3, 2, 1, 1]
    # Without a truth the reference is the rater the classifier learnt from.
    no_truth = frame.assign(grade_truth="")
    assert worst_cases(no_truth)["sop_instance_uid"].tolist() == ["two-off", "one-off-2", "one-off"]
