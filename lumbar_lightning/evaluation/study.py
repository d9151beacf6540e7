"""The study's tables from a finished cross-validation: raters vs raters, raters vs classifiers, vs the truth.

Classifier ``Ck`` is the pipeline trained on rater ``Ak``'s labels; every image is tested once per rater, in
the fold holding its patient. Comparisons use the intersection: images every rater of the run labelled.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar_lightning.data.dataset import TRUTH_RATER
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.grading import active
from lumbar_lightning.data.labels import CONSENSUS, grades
from lumbar_lightning.evaluation.agreement import agreement, severity, weighted_log_loss
from lumbar_lightning.evaluation.statistics import bootstrap_ci, paired_ttest
from lumbar_lightning.layout import RunLayout


def task_classes() -> dict[str, list[str]]:
    """Each task's classes: the level's, and the active grading scheme's grades."""
    return {"rootlet": ["cord", "rootlet"], "grade": list(grades())}


#: Won et al.: accuracy and F1 (%) per pair and task, and each rater's grade distribution.
PAPER = {
    "rootlet": {"A1-A2": (90.3, 86.6), "A1-C1": (92.7, 90.6), "A2-C2": (96.8, 95.6)},
    "grade": {"A1-A2": (89.2, 76.5), "A1-C1": (91.5, 78.4), "A2-C2": (89.4, 75.7)},
    "grade_distribution": {"A1": (78.8, 15.4, 4.2, 1.6), "A2": (74.4, 18.6, 6.0, 2.0)},
}
#: The F1 we put beside the paper's: the unweighted mean of the per-class F1 over classes present (macro F1).
PAPER_COMPARABLE_F1 = "f1_macro"


def classifier_name(rater: str) -> str:
    """Classifier1 learns from Analyzer1: ``A1`` -> ``C1``; the raters' consensus -> ``Cc``; other rater names ->
    ``C[name]``."""
    if rater == CONSENSUS:
        return "Cc"
    m = re.fullmatch(r"A(\d+)", rater)
    return f"C{m.group(1)}" if m else f"C[{rater}]"


def baseline_name(rater: str) -> str:
    """The baseline CNN trained on Analyzer1's boxes and grades: ``A1`` -> ``B1`` (other names -> ``B[name]``)."""
    return "B" + classifier_name(rater)[1:]


def _is_baseline(name: str) -> bool:
    return re.fullmatch(r"B(\d+|c|\[.+\])", name) is not None


def load_fold_predictions(root: Path | str) -> pd.DataFrame:
    """Every fold's ``predictions.csv`` of a run, as strings: one row per tested image and classifier."""
    root = Path(root)
    files = [f.predictions for f in RunLayout(root).folds(having="predictions")]
    if not files:
        raise DataContractError(
            f"no */fold_*/predictions.csv under {root}: is it a finished lumbar-cv run folder?"
        )
    return pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in files], ignore_index=True)


def load_cv_predictions(root: Path | str, fold_predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per tested image: every rater's labels, the truth, and each classifier's level and grade
    (from ``fold_predictions``, ``load_fold_predictions(root)``, when the caller has read them already)."""
    frame = load_fold_predictions(root) if fold_predictions is None else fold_predictions
    label_cols = [
        c
        for c in frame.columns
        if re.fullmatch(r"(level|grade)_.+", c) and not c.startswith(("level_C", "grade_C"))
    ]
    # the consensus classifier's own training labels are derived from the raters': not a reader of their own
    label_cols = [
        c
        for c in label_cols
        if c not in {"gt_box_level", "gt_box_grade", f"level_{CONSENSUS}", f"grade_{CONSENSUS}"}
    ]
    base = frame.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid")[
        ["patient", "fold", "vertebral_level", *label_cols]
    ]
    for rater, part in frame.groupby("trained_on"):
        part = part.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid")
        c = classifier_name(rater)
        probs = part[[f"p_{g}" for g in grades()]].astype(float).to_numpy()
        base[f"level_{c}"] = part["pred_level"]
        # The grader's call on the detected patch (identical to pred_grade wherever the chain says rootlet).
        base[f"grade_{c}"] = pd.Series(np.asarray(grades())[probs.argmax(axis=1)], index=part.index)
        base[f"conf_{c}"] = pd.Series(
            probs.max(axis=1), index=part.index
        )  # calibrated: what referral ranks by
        base[f"fold_{c}"] = part["fold"]
        if active().weights:  # the scheme's weighted log loss needs each classifier's probabilities
            for g, column in zip(grades(), probs.T, strict=True):
                base[f"p_{c}_{g}"] = pd.Series(column, index=part.index)
        if "baseline_grade" in part:  # the baseline CNN on the rater's own boxes (grade task only)
            base[f"grade_{baseline_name(rater)}"] = part["baseline_grade"]
    return base.fillna("").reset_index()


def readers(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Raters, classifiers and (for synthetic data) the truth present in a predictions frame."""
    names = sorted({c.split("_", 1)[1] for c in frame.columns if c.startswith("level_")})
    return {
        "raters": [n for n in names if not n.startswith("C") and n not in (TRUTH_RATER, CONSENSUS)],
        "classifiers": [n for n in names if n.startswith("C")],
        "truth": [TRUTH_RATER] if TRUTH_RATER in names else [],
        "baselines": sorted(
            c[len("grade_") :]
            for c in frame.columns
            if c.startswith("grade_") and _is_baseline(c[len("grade_") :])
        ),
    }


def comparison_pairs(frame: pd.DataFrame, task: str = "grade") -> list[tuple[str, str]]:
    """A1-A2 (inter-rater), Ak-Ck, C1-C2, and truth-X on synthetic data, for whatever the run has; for the grade,
    also Ak-Bk and truth-Bk where the run trained the baseline CNN."""
    who = readers(frame)
    raters, classifiers = who["raters"], who["classifiers"]
    pairs = [(a, b) for i, a in enumerate(raters) for b in raters[i + 1 :]]
    pairs += [(r, classifier_name(r)) for r in raters if classifier_name(r) in classifiers]
    if (
        classifier_name(CONSENSUS) in classifiers
    ):  # the consensus classifier against each rater it learnt from
        pairs += [(r, classifier_name(CONSENSUS)) for r in raters]
    pairs += [(a, b) for i, a in enumerate(classifiers) for b in classifiers[i + 1 :]]
    pairs += [(t, x) for t in who["truth"] for x in raters + classifiers]
    if task == "grade":
        baselines = who["baselines"]
        pairs += [(r, baseline_name(r)) for r in raters if baseline_name(r) in baselines]
        if baseline_name(CONSENSUS) in baselines:
            pairs += [(r, baseline_name(CONSENSUS)) for r in raters]
        pairs += [(t, b) for t in who["truth"] for b in baselines]
    return pairs


def task_set(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    """The fair comparison set: rootlet task, images every rater labelled; grade task, images every rater graded."""
    raters = readers(frame)["raters"]
    column = "level" if task == "rootlet" else "grade"
    mask = np.ones(len(frame), dtype=bool)
    for r in raters:
        mask &= (frame[f"{column}_{r}"] != "").to_numpy()
    for c in readers(frame)["classifiers"]:
        mask &= (frame[f"{column}_{c}"] != "").to_numpy()
    return frame[mask]


def pair_table(frame: pd.DataFrame, task: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Agreement, F1, kappa, paired t-test and patient-bootstrap CI for every pair on the task's set."""
    column = "level" if task == "rootlet" else "grade"
    data = task_set(frame, task)
    out = {}
    for a, b in comparison_pairs(frame, task):
        x, y = data[f"{column}_{a}"], data[f"{column}_{b}"]
        keep = (x != "") & (y != "")
        x, y, patients = x[keep], y[keep], data.loc[keep, "patient"]
        row = agreement(x, y, task_classes()[task])
        if task == "grade":  # ordinal: gross errors and the rare grades' recall
            row.update(severity(x, y, task_classes()[task]))
            probs = [f"p_{b}_{g}" for g in grades()]
            if active().weights and set(probs) <= set(data.columns):
                p = data.loc[keep, probs].replace("", np.nan).astype(float).to_numpy()
                row["weighted_log_loss"] = weighted_log_loss(x, p, grades(), active().weights)
        row["ttest"] = paired_ttest(x, y)
        row["accuracy_ci95"] = list(bootstrap_ci(x, y, patients, seed=seed))
        out[f"{a}-{b}"] = row
    return out


def per_level_table(frame: pd.DataFrame, task: str) -> dict[str, dict[str, dict[str, float]]]:
    """Agreement per vertebral level for every pair (the paper's question: does it transfer across levels?)."""
    column = "level" if task == "rootlet" else "grade"
    data = task_set(frame, task)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for level, part in data.groupby("vertebral_level"):
        out[str(level) or "?"] = {
            f"{a}-{b}": {
                "accuracy": float(np.mean(part[f"{column}_{a}"] == part[f"{column}_{b}"])),
                "n": len(part),
            }
            for a, b in comparison_pairs(frame, task)
        }
    return out


def grade_distribution(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Share of each grade per reader on the grade task's set (the paper's 78.8/15.4/4.2/1.6 line)."""
    data = task_set(frame, "grade")
    who = readers(frame)
    return {
        name: {g: float(np.mean(data[f"grade_{name}"] == g)) if len(data) else float("nan") for g in grades()}
        for name in who["raters"] + who["classifiers"] + who["truth"]
    }


def study_tables(frame: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    return {
        "rootlet": pair_table(frame, "rootlet", seed),
        "grade": pair_table(frame, "grade", seed),
        "per_level": {task: per_level_table(frame, task) for task in task_classes()},
        "grade_distribution": grade_distribution(frame),
        "paper_comparable_f1": PAPER_COMPARABLE_F1,
    }
