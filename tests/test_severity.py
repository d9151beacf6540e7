"""Severity-aware agreement: gross errors (two grades or more apart) and per-grade recall, on known cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lumbar_lightning.data.grading import SCHIZAS
from lumbar_lightning.evaluation.agreement import severity
from lumbar_lightning.evaluation.report import render_report

GRADES = SCHIZAS.classes


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

    frame = pd.DataFrame(
        {
            "sop_instance_uid": list("abcdef"),
            "patient": ["p1", "p1", "p2", "p2", "p3", "p3"],
            "level_A1": ["rootlet"] * 6,
            "grade_A1": ["A", "B", "C", "D", "D", "A"],
            "level_C1": ["rootlet"] * 6,
            "grade_C1": ["A", "B", "A", "B", "D", "D"],
        }
    )
    row = pair_table(frame, "grade")["A1-C1"]
    assert row["gross_errors"] == 3 and row["recall_per_class"]["D"] == pytest.approx(0.5)
    summary = {
        "rootlet": {},
        "grade": {"A1-C1": row},
        "grade_distribution": {},
        "per_level": {"rootlet": {}, "grade": {}},
        "paper": {"grade_distribution": {}},
        "per_fold": {},
    }
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


def test_the_ordinal_loss_adds_the_expected_distance_in_grades() -> None:
    import torch

    from lumbar_lightning.models.stages import GradeClassifier

    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 5.0, 0.0]])
    target = torch.tensor([3, 3, 3])
    plain = GradeClassifier(width=0.125).loss(logits, target)
    ordinal = GradeClassifier(width=0.125, ordinal_weight=0.5).loss(logits, target)
    p = logits.softmax(-1)
    distance = (p * torch.tensor([3.0, 2.0, 1.0, 0.0])).sum(-1).mean()
    assert float(ordinal - plain) == pytest.approx(0.5 * float(distance), rel=1e-6)
    # A D called A (3 grades) costs about three times a D called C (1 grade).
    per_image = [
        GradeClassifier(width=0.125, ordinal_weight=1.0).loss(logits[i : i + 1], target[:1])
        - GradeClassifier(width=0.125).loss(logits[i : i + 1], target[:1])
        for i in (0, 2)
    ]
    assert float(per_image[0] / per_image[1]) == pytest.approx(3.0, rel=0.05)


def test_the_ranked_probability_score_is_ordinal_and_proper() -> None:
    """``ordinal_loss=rps``: the squared gap of the cumulative distributions. A confident D called A costs what
    the expected distance charges (3), a D called C one third of it; and unlike the expected distance it is
    smallest at the labels' own distribution, not at a point mass on the likeliest grade."""
    import torch

    from lumbar_lightning.models.stages import GradeClassifier

    plain = GradeClassifier(width=0.125)
    rps = GradeClassifier(width=0.125, ordinal_weight=1.0, ordinal_loss="rps")
    distance = GradeClassifier(width=0.125, ordinal_weight=1.0)
    d = torch.tensor([3])
    for logits, cost in (([30.0, 0, 0, 0], 3.0), ([0, 0, 30.0, 0], 1.0)):
        x = torch.tensor([logits])
        assert float(rps.loss(x, d) - plain.loss(x, d)) == pytest.approx(cost, abs=1e-6)
        assert float(distance.loss(x, d) - plain.loss(x, d)) == pytest.approx(cost, abs=1e-6)
    p = torch.tensor([0.5, 0.2, 0.2, 0.1])
    gap = (p.cumsum(0) - torch.tensor([0.0, 1.0, 1.0, 1.0]))[:-1]  # against a B label
    x = p.log()[None]
    assert float(rps.loss(x, torch.tensor([1])) - plain.loss(x, torch.tensor([1]))) == pytest.approx(
        float(gap.square().sum()), rel=1e-6
    )

    # Labels drawn 60% B / 40% C: the expected ordinal term alone over grade distributions
    def expected(module: GradeClassifier, probs: list[float]) -> float:
        x = torch.tensor([probs]).log()
        return sum(
            w * float(module.loss(x, torch.tensor([y])) - plain.loss(x, torch.tensor([y])))
            for y, w in ((1, 0.6), (2, 0.4))
        )

    honest, sure = [1e-6, 0.6, 0.4, 1e-6], [1e-6, 1 - 2e-6, 1e-6, 1e-6]
    assert expected(rps, honest) < expected(rps, sure)
    assert expected(distance, sure) < expected(distance, honest)  # the improper term prefers the point mass
    with pytest.raises(ValueError, match="ordinal_loss"):
        GradeClassifier(width=0.125, ordinal_weight=1.0, ordinal_loss="emd")


def _pair(acc: float, f1: float = 0.85, kq: float = 0.9, gross: int = 0) -> dict[str, object]:
    return {"accuracy": acc, "f1_macro": f1, "kappa_quadratic": kq, "gross_errors": gross}


def test_cohort_rows_check_every_bar(tmp_path: Path) -> None:
    """The generalisation bars on a known summary: C1 meets them all; C2 misses the raters' agreement, macro F1,
    gross errors (one more than the better rater), rootlet/cord and the baseline."""
    from lumbar_lightning.evaluation.cohorts import cohort_rows, cohort_table

    summary = {
        "grade": {
            "A1-A2": _pair(0.89),
            "A1-C1": _pair(0.91),
            "A2-C2": _pair(0.86),
            "truth-A1": _pair(0.92, gross=1),
            "truth-A2": _pair(0.93, gross=0),
            "truth-C1": _pair(0.94, gross=0),
            "truth-C2": _pair(0.88, f1=0.79, gross=1),
            "A1-B1": _pair(0.90),
            "A2-B2": _pair(0.89),
            "truth-B1": _pair(0.90),
            "truth-B2": _pair(0.90),
        },
        "rootlet": {"truth-C1": _pair(0.975), "truth-C2": _pair(0.965)},
        "per_fold": {"A1": {"detection_rate": {"mean": 0.98}}, "A2": {"detection_rate": {"mean": 0.98}}},
    }
    (tmp_path / "cv_summary.json").write_text(json.dumps(summary))
    c1, c2 = cohort_rows(tmp_path)
    assert all(c1["checks"].values())
    assert {k for k, ok in c2["checks"].items() if not ok} == {
        "truth_above_inter_rater",
        "f1_macro",
        "gross_errors",
        "rootlet_truth",
        "beats_baseline",
    }
    assert c1["baseline"]["truth"] == 0.90 and c1["inter_rater"] == 0.89
    table = cohort_table({"site": tmp_path})
    assert "| site | C1 pipeline | 94.0 | 91.0 |" in table and "| site | B1 baseline | 90.0 |" in table
    cli = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.cohorts",
        f"runs={{site: '{tmp_path}'}}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == table.strip()  # lumbar-cohorts prints the same table


def test_the_seed_spread_table_is_written_from_spread_json(tmp_path: Path) -> None:
    from lumbar_lightning.evaluation.record import SPREAD_BEGIN, SPREAD_END, replace_block, spread_block

    values = {
        "grade/chained/accuracy": [0.90, 0.92, 0.94],
        "grade/chained/kappa_quadratic": [0.9, 0.91, 0.95],
    }
    spread = {"seeds": [0, 1, 2], "folds": ["A1/fold_0"], "values": {"A1": values}}
    (tmp_path / "spread.json").write_text(json.dumps(spread))
    block = spread_block(tmp_path)
    assert "| A1 | grade agreement | 90.0 / 92.0 / 94.0 | 92.0 | 2.0 |" in block
    assert "| A1 | grade quadratic kappa | 0.900 / 0.910 / 0.950 | 0.920 | 0.026 |" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{SPREAD_BEGIN}\nold\n{SPREAD_END}\nafter\n")
    replace_block(readme, block, SPREAD_BEGIN, SPREAD_END)
    text = readme.read_text()
    assert "old" not in text and text.startswith("before") and text.endswith("after\n") and block in text


def test_a_worst_case_title_names_only_the_raters_its_row_carries() -> None:
    """C1's rows of a run with Cc have no consensus column (NaN once the folds are joined): no 'consensus:nan'."""
    from lumbar_lightning.evaluation.figures import case_title

    frame = pd.DataFrame(
        [
            {"trained_on": "A1", "grade_A1": "D", "grade_A2": "", "pred_grade": "A", "reference": "D"},
            {
                "trained_on": "consensus",
                "grade_A1": "C",
                "grade_A2": "D",
                "grade_consensus": "D",
                "pred_grade": "B",
                "reference": "D",
            },
        ]
    ).assign(confidence=[0.91, 0.5], vertebral_level="L4/L5", patient="P-1")
    raters = ["A1", "A2", "consensus"]
    first, second = (case_title(row, raters) for _, row in frame.iterrows())
    assert first == "C1 A (91%), ref D\nA1:D A2:-  L4/L5 P-1"
    assert second == "Cc B (50%), ref D\nA1:C A2:D consensus:D  L4/L5 P-1"
