"""Every statistic on small cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lumbar_lightning.evaluation.agreement import agreement
from lumbar_lightning.evaluation.statistics import (
    bootstrap_ci,
    fold_summary,
    mcnemar,
    paired_fold_ttest,
    paired_ttest,
)

GRADES = ["A", "B", "C", "D"]


def test_agreement_on_a_hand_computed_case() -> None:
    a = ["A", "A", "B", "C"]
    b = ["A", "B", "B", "C"]
    row = agreement(a, b, GRADES)
    assert row["n"] == 4 and row["accuracy"] == 0.75
    # kappa: po = 0.75, pe = (2*1 + 1*2 + 1*1) / 16 = 0.3125 -> (0.75 - 0.3125) / 0.6875
    assert row["kappa"] == pytest.approx((0.75 - 0.3125) / 0.6875)
    # per-class F1: A 2/3 (p=1, r=.5), B 2/3 (p=.5, r=1), C 1, D absent -> macro over present classes
    assert row["f1_per_class"]["A"] == pytest.approx(2 / 3) and row["f1_per_class"]["C"] == 1.0
    assert row["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert row["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_quadratic_kappa_punishes_far_disagreements_more() -> None:
    ref = ["A", "B", "C", "D"] * 5
    near = ["B", "B", "C", "D"] * 5  # A read as B
    far = ["D", "B", "C", "D"] * 5  # A read as D
    assert agreement(ref, near, GRADES)["accuracy"] == agreement(ref, far, GRADES)["accuracy"]
    assert agreement(ref, near, GRADES)["kappa"] == pytest.approx(agreement(ref, far, GRADES)["kappa"])
    assert agreement(ref, near, GRADES)["kappa_quadratic"] > agreement(ref, far, GRADES)["kappa_quadratic"]
    assert agreement(ref, ref, GRADES)["kappa_quadratic"] == 1.0


def test_paired_ttest_on_ordinal_codes() -> None:
    # differences 1, 1, 0, 1: mean 0.75, sd 0.5, t = 0.75 / (0.5 / 2) = 3 with 3 df -> p = 0.0577
    res = paired_ttest(["A", "A", "A", "B"], ["B", "B", "A", "C"])
    assert res["t"] == pytest.approx(3.0) and res["mean_diff"] == 0.75
    assert res["p"] == pytest.approx(0.05767, abs=1e-4)
    assert paired_ttest(["A", "B"], ["A", "B"])["p"] == 1.0
    assert paired_ttest(["cord", "rootlet"], ["rootlet", "rootlet"])["mean_diff"] == 0.5


def test_mcnemar_exact() -> None:
    ref = ["A"] * 10
    a = ["A"] * 8 + ["B"] * 2  # right on 8
    b = ["A"] * 3 + ["B"] * 7  # right on 3, all inside A's
    res = mcnemar(ref, a, b)
    assert res["a_only_right"] == 5 and res["b_only_right"] == 0
    assert res["p"] == pytest.approx(2 * 0.5**5)  # two-sided binomial, 5 of 5
    assert mcnemar(ref, a, a)["p"] == 1.0


def test_bootstrap_ci_resamples_patients() -> None:
    a = ["A"] * 40
    b = ["A"] * 30 + ["B"] * 10
    patients = [f"p{i // 10}" for i in range(40)]  # patient p3 holds every disagreement
    lo, hi = bootstrap_ci(a, b, patients, n_resamples=2000, seed=1)
    assert 0.0 <= lo < 0.75 < hi <= 1.0
    assert hi == pytest.approx(1.0)  # resamples without p3 agree perfectly
    # With disagreements spread over patients the interval is narrower.
    spread = [f"p{i % 4}" for i in range(40)]
    lo2, hi2 = bootstrap_ci(a, b, spread, n_resamples=2000, seed=1)
    assert hi2 - lo2 < hi - lo
    assert bootstrap_ci(a, a, patients) == (1.0, 1.0)


def test_fold_summary_and_paired_fold_ttest() -> None:
    s = fold_summary([0.8, 0.9, float("nan")])
    assert s["mean"] == pytest.approx(0.85) and s["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert s["n_folds"] == 2
    res = paired_fold_ttest([0.80, 0.82, 0.84, 0.86], [0.81, 0.84, 0.85, 0.89])
    # diffs .01 .02 .01 .03: mean .0175, sd .009574 -> t = 3.656, p = 0.0354 (3 df)
    assert res["mean_diff"] == pytest.approx(0.0175)
    assert res["t"] == pytest.approx(3.6556, abs=1e-3) and res["p"] == pytest.approx(0.0354, abs=1e-3)
