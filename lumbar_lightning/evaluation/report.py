"""``cv_summary.json`` and ``report.md`` for a finished cross-validation run folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lumbar_lightning.data.grading import SCHIZAS, active
from lumbar_lightning.data.labels import grades
from lumbar_lightning.evaluation.calibration import calibration_summary
from lumbar_lightning.evaluation.figures import (
    confusion_grid,
    failure_grid,
    referral_figure,
    reliability_figure,
    worst_cases,
)
from lumbar_lightning.evaluation.referral import referral_table
from lumbar_lightning.evaluation.statistics import fold_summary
from lumbar_lightning.evaluation.study import (
    PAPER,
    classifier_name,
    load_cv_predictions,
    load_fold_predictions,
    readers,
    study_tables,
    task_set,
)
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.layout import RunLayout

if TYPE_CHECKING:
    import pandas as pd

SUMMARY_KEYS = (
    "n",
    "accuracy",
    "accuracy_ci95",
    "f1_macro",
    "f1_per_class",
    "kappa",
    "kappa_quadratic",
    "ttest",
    "confusion_matrix",
    "classes",
    "gross_errors",
    "gross_error_rate",
    "recall_per_class",
    "weighted_log_loss",  # where the grading scheme weights its classes (grading=rsna)
)


def fold_metrics(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Every finished fold's metrics.json, per rater."""
    finished = RunLayout(root).folds(having="metrics")
    return {
        rater: [json.loads(f.metrics.read_text()) for f in finished if f.rater == rater]
        for rater in sorted({f.rater for f in finished})
    }


def per_fold_metrics(per_rater: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and spread across folds of each rater's chained metrics (from every fold's metrics.json)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for rater, folds in per_rater.items():
        series = {
            "detection_rate": [m["detector"].get("test/acc", np.nan) for m in folds],
            "detection_iou": [m["detector"].get("test/iou", np.nan) for m in folds],
            "rootlet_accuracy": [
                m.get("rootlet", {}).get("chained", {}).get("accuracy", np.nan) for m in folds
            ],
            "grade_accuracy": [m["grade"]["chained"]["accuracy"] for m in folds],
            "grade_f1_macro": [m["grade"]["chained"]["f1_macro"] for m in folds],
            "grade_accuracy_balanced": [m["grade"]["chained_balanced"]["accuracy"] for m in folds],
            "grade_f1_macro_balanced": [m["grade"]["chained_balanced"]["f1_macro"] for m in folds],
            "seconds": [m.get("seconds", np.nan) for m in folds],
        }
        out[rater] = {k: {**fold_summary(v), "values": [float(x) for x in v]} for k, v in series.items()}
    return out


BASELINE_KEYS = ("accuracy", "f1_macro", "kappa_quadratic", "gross_errors")


def baseline_comparison(grade: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per reference (the truth, each rater) and classifier number: the pipeline (Ck, chained from the detected box)
    beside the baseline CNN (Bk, on the rater's own box), and the difference pipeline - baseline."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for pair, row in grade.items():
        ref, _, reader = pair.partition("-")
        if not reader.startswith("B"):
            continue
        pipeline = grade.get(f"{ref}-C{reader[1:]}")
        if pipeline is None:
            continue
        out[f"{ref}-{reader[1:]}"] = {
            "pipeline": {k: float(pipeline[k]) for k in BASELINE_KEYS},
            "baseline": {k: float(row[k]) for k in BASELINE_KEYS},
            "pipeline_minus_baseline": {k: float(pipeline[k]) - float(row[k]) for k in BASELINE_KEYS},
        }
    return out


def cv_summary(
    root: Path | str,
    seed: int = 0,
    fold_predictions: pd.DataFrame | None = None,
    level_stage: bool | None = None,
) -> dict[str, Any]:
    """The study's tables of a run folder. ``level_stage``: whether the classifiers have a rootlet/cord stage; None
    reads it from the folds' ``metrics.json`` (a CV run), which an external validation does not write."""
    root = Path(root)
    frame = load_cv_predictions(root, fold_predictions)
    tables = study_tables(frame, seed)
    folds = fold_metrics(root)
    who = readers(frame)
    referral_pairs = [(t, c) for t in who["truth"] for c in who["classifiers"]]
    referral_pairs += [
        (r, classifier_name(r)) for r in who["raters"] if classifier_name(r) in who["classifiers"]
    ]
    # a run without the rootlet stage (stages=[detector, grade]) grades every slice: no level table
    has_rootlet = (
        any("rootlet" in m for per_rater in folds.values() for m in per_rater)
        if level_stage is None
        else level_stage
    )
    return {
        "rootlet": {
            p: {k: v for k, v in row.items() if k in SUMMARY_KEYS}
            for p, row in (tables["rootlet"] if has_rootlet else {}).items()
        },
        "grade": {
            p: {k: v for k, v in row.items() if k in SUMMARY_KEYS} for p, row in tables["grade"].items()
        },
        "baseline": baseline_comparison(tables["grade"]),
        "per_level": {t: v for t, v in tables["per_level"].items() if t != "rootlet" or has_rootlet},
        "grade_distribution": tables["grade_distribution"],
        "per_fold": per_fold_metrics(folds),
        "calibration": calibration_summary(folds),
        "referral": referral_table(task_set(frame, "grade"), referral_pairs, who["raters"]),
        "paper": PAPER,
        "paper_comparable_f1": tables["paper_comparable_f1"],
        "images": len(frame),
    }


def _pct(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def render_report(summary: dict[str, Any], title: str = "lumbar-lightning cross-validation") -> str:
    """Markdown: our numbers beside the paper's, per task, then distributions, levels and folds."""
    lines = [f"# {title}", ""]
    lines += [
        "Agreement on the images every rater labelled (rootlet/cord) or graded (grade). Ck is the pipeline trained",
        "on rater Ak's labels, chained as in the paper (detected box, then classifiers). F1 is macro F1 (the mean",
        "of per-class F1 over the classes present), the figure we compare with the paper's F1.",
        "",
    ]
    for task, name in (("rootlet", "Rootlet / cord"), ("grade", "Stenosis grade")):
        if not summary[task]:
            continue  # a stage the run did not have
        lines += [
            f"## {name}",
            "",
            "| pair | n | agreement % (95% CI) | macro F1 % | kappa | quadratic kappa | "
            "paired t-test p | paper agreement % | paper F1 % |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for pair, row in summary[task].items():
            lo, hi = row.get("accuracy_ci95", [np.nan, np.nan])
            paper = summary["paper"].get(task, {}).get(pair) if active() == SCHIZAS else None
            lines.append(
                f"| {pair} | {row['n']} | {_pct(row['accuracy'])} ({_pct(lo)}-{_pct(hi)}) | {_pct(row['f1_macro'])} | "
                f"{row['kappa']:.3f} | {row.get('kappa_quadratic', float('nan')):.3f} | {row['ttest']['p']:.3g} | "
                f"{paper[0] if paper else ''} | {paper[1] if paper else ''} |"
            )
        figure = RunLayout(Path()).confusion_figure(task)  # relative to the report
        lines += ["", f"![{name} confusion matrices]({figure})", ""]
    lines += [
        "## Severe grades",
        "",
        f"Disagreements of two grades or more ({' < '.join(grades())}), and the second reader's recall of",
        "each grade of the first (the pair's first name is the reference).",
        "",
        "| pair | gross errors | gross error % | " + " | ".join(f"recall {g} %" for g in grades()) + " |",
        "|---|---|---|" + "---|" * len(grades()),
    ]
    for pair, row in summary["grade"].items():
        recall = row.get("recall_per_class", {})
        cells = [str(row.get("gross_errors", "")), _pct(row.get("gross_error_rate"))]
        cells += [_pct(recall.get(g)) for g in grades()]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    scored = {
        pair: row["weighted_log_loss"] for pair, row in summary["grade"].items() if "weighted_log_loss" in row
    }
    if scored:  # the scheme weights its classes (grading=rsna: the challenge's score)
        weights = " / ".join(f"{g} {w:g}" for g, w in zip(grades(), active().weights or (), strict=False))
        lines += [
            "",
            f"Weighted log loss of each classifier's probabilities (class weights {weights}; lower is better):",
            "",
        ]
        lines += ["| pair | weighted log loss |", "|---|---|"]
        lines += [f"| {pair} | {value:.4f} |" for pair, value in scored.items()]
    if summary.get("baseline"):
        lines += [
            "",
            "## Pipeline against the baseline CNN",
            "",
            "Does the three-stage pipeline earn its complexity here? Ck is the pipeline on the detected box; Bk a",
            "plain 4-layer CNN trained on the same folds and rater, grading the rater's own box (no detector, no",
            "level call): the comparison is generous to the baseline. Agreement and macro F1 in %.",
            "",
            "| reference-k | agreement C / B | macro F1 C / B | quadratic kappa C / B | gross errors C / B |",
            "|---|---|---|---|---|",
        ]
        for key, row in summary["baseline"].items():
            c, b = row["pipeline"], row["baseline"]
            lines.append(
                f"| {key} | {_pct(c['accuracy'])} / {_pct(b['accuracy'])} | {_pct(c['f1_macro'])} / "
                f"{_pct(b['f1_macro'])} | {c['kappa_quadratic']:.3f} / {b['kappa_quadratic']:.3f} | "
                f"{c['gross_errors']:.0f} / {b['gross_errors']:.0f} |"
            )
    lines += calibration_lines(summary.get("calibration", {}))
    lines += referral_lines(summary.get("referral", {}))
    lines += ["", "## Grade distribution (%)", "", "| reader | " + " | ".join(grades()) + " |"]
    lines += ["|---|" + "---|" * len(grades())]
    for who, dist in summary["grade_distribution"].items():
        lines.append(f"| {who} | " + " | ".join(_pct(dist[g]) for g in grades()) + " |")
    if active() == SCHIZAS:  # the paper's distribution is in its own scheme
        for who, dist in summary["paper"]["grade_distribution"].items():
            lines.append(f"| paper {who} | " + " | ".join(f"{v:.1f}" for v in dist) + " |")
    lines += ["", "## Agreement per vertebral level (%)", ""]
    for task in ("rootlet", "grade"):
        levels = summary["per_level"].get(task)
        if not levels:
            continue
        pairs = list(next(iter(levels.values())))
        lines += [
            f"**{task}**",
            "",
            "| level | n | " + " | ".join(pairs) + " |",
            "|---|---|" + "---|" * len(pairs),
        ]
        for level, row in levels.items():
            n = next(iter(row.values()))["n"]
            lines.append(f"| {level} | {n} | " + " | ".join(_pct(row[p]["accuracy"]) for p in pairs) + " |")
        lines.append("")
    lines += [
        "## Across folds (mean ± sd of the chained pipeline against its own rater)",
        "",
        "| rater | detection rate % | rootlet % | grade % | grade macro F1 % | grade % (no prior correction) | "
        "grade macro F1 % (no prior correction) | s per fold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rater, m in summary["per_fold"].items():
        cells = [
            f"{_pct(m[k]['mean'])} ± {_pct(m[k]['std'])}"
            for k in (
                "detection_rate",
                "rootlet_accuracy",
                "grade_accuracy",
                "grade_f1_macro",
                "grade_accuracy_balanced",
                "grade_f1_macro_balanced",
            )
        ]
        lines.append(f"| {rater} | " + " | ".join(cells) + f" | {m['seconds']['mean']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def calibration_lines(calibration: dict[str, dict[str, Any]]) -> list[str]:
    """The calibration section: each stage's temperature and test-fold ECE before and after scaling."""
    if not calibration:
        return []
    lines = [
        "",
        "## Calibration",
        "",
        "Expected calibration error (15 confidence bins, pooled over the test folds, the rater's own boxes) before",
        "and after temperature scaling fitted on each fold's validation split. The temperature never changes a",
        "call: only how sure the classifier says it is, which referral ranks by.",
        "",
        "| rater | stage | temperature mean (range) | ECE before % | ECE after % | ECE after, per fold mean % |",
        "|---|---|---|---|---|---|",
    ]
    for rater, stages in calibration.items():
        for stage, row in stages.items():
            t = np.asarray(row["temperature"], dtype=float)
            lines.append(
                f"| {rater} | {stage} | {t.mean():.2f} ({t.min():.2f}-{t.max():.2f}) | {_pct(row['ece_before'])} | "
                f"{_pct(row['ece_after'])} | {_pct(float(np.mean(row['ece_after_per_fold'])))} |"
            )
    figure = RunLayout(Path()).reliability_figure  # relative to the report
    return [*lines, "", f"![reliability diagrams]({figure})"]


def referral_lines(referral: dict[str, Any]) -> list[str]:
    """The referral section: grade agreement on the images kept at each coverage."""
    if not referral.get("pairs"):
        return []
    coverages = next(iter(referral["pairs"].values()))["coverage"]
    lines = [
        "",
        "## Referral",
        "",
        "Grade agreement on the images the classifier keeps when the least confident (calibrated top probability)",
        "are referred to a human, at each coverage (share of images graded).",
    ]
    if "rater_agreement" in referral:
        lines.append(
            f"The raters agree on {_pct(referral['rater_agreement'])}% of the same images: the line to beat."
        )
    lines += [
        "",
        "| pair | " + " | ".join(f"{100 * c:.0f}%" for c in coverages) + " |",
        "|---|" + "---|" * len(coverages),
    ]
    for pair, curve in referral["pairs"].items():
        lines.append(f"| {pair} | " + " | ".join(_pct(a) for a in curve["accuracy"]) + " |")
    figure = RunLayout(Path()).referral_figure
    return [*lines, "", f"![accuracy against coverage]({figure})"]


def write_cv_report(
    root: Path | str,
    seed: int = 0,
    title: str | None = None,
    extra: dict[str, Any] | None = None,
    appendix: str = "",
    image_of: Callable[[str], np.ndarray] | None = None,
    level_stage: bool | None = None,
) -> dict[str, Any]:
    """Write ``cv_summary.json``, ``report.md`` and the confusion-matrix figures into the run folder; ``extra``
    joins the summary and ``appendix`` ends the report (what an external validation adds). With ``image_of`` (the
    ingestion cache's reader) the report also shows the worst cases (``figures/worst_cases.png``); ``level_stage``
    as ``cv_summary``'s."""
    root = Path(root)
    layout = RunLayout(root)
    fold_predictions = load_fold_predictions(root)  # read once: the tables and the worst cases both use them
    summary = {**cv_summary(root, seed, fold_predictions, level_stage), **(extra or {})}
    if image_of is not None:
        cases = worst_cases(fold_predictions)
        summary["worst_cases"] = [
            {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in cases[
                [
                    "patient",
                    "fold",
                    "trained_on",
                    "vertebral_level",
                    "pred_grade",
                    "reference",
                    "confidence",
                    "distance",
                ]
            ].to_dict("records")
        ]
        if len(cases):
            failure_grid(cases, image_of, layout.worst_cases)
            appendix = (
                "\n## Worst cases\n\nThe chained pipeline's most confident wrong grades (errors of two grades or more "
                "first), against the truth where the data set has one, else the classifier's own rater.\n\n"
                f"![worst cases]({RunLayout(Path()).worst_cases})\n" + appendix  # relative to the report
            )
    for task in ("rootlet", "grade"):
        if not summary[task]:
            continue
        pairs = [p for p in summary[task] if not p.startswith("truth-")] + [
            p for p in summary[task] if p.startswith("truth-")
        ]
        confusion_grid(
            summary[task],
            pairs,
            f"{task}: reference reader on rows",
            layout.confusion_figure(task),
        )
    if summary.get("calibration"):
        reliability_figure(summary["calibration"], layout.reliability_figure)
    if summary.get("referral", {}).get("pairs"):
        referral_figure(summary["referral"], layout.referral_figure)
    atomic_write_text(layout.summary, json.dumps(summary, indent=2, default=float))
    report = render_report(summary, title or f"lumbar-lightning cross-validation: {root.name}")
    atomic_write_text(layout.report, report + appendix)
    return summary


#: What a multi-seed run reports per pair, as mean and spread over seeds.
SEED_METRICS = ("accuracy", "f1_macro", "kappa_quadratic", "gross_errors")


def seeds_summary(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Each pair's headline figures over several seeds' cross-validation summaries: values, mean, sd."""
    out: dict[str, Any] = {"seeds": list(per_seed)}
    for task in ("rootlet", "grade"):
        pairs = list(next(iter(per_seed.values()))[task])
        out[task] = {}
        for pair in pairs:
            rows = [s[task][pair] for s in per_seed.values()]
            out[task][pair] = {}
            for m in SEED_METRICS:
                if all(m in r for r in rows):
                    values = [float(r[m]) for r in rows]
                    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                    out[task][pair][m] = {"values": values, "mean": float(np.mean(values)), "std": std}
    return out


def _mean_sd(row: dict[str, Any], metric: str, scale: float = 100.0, digits: int = 1) -> str:
    if metric not in row:
        return ""
    return f"{scale * row[metric]['mean']:.{digits}f} +- {scale * row[metric]['std']:.{digits}f}"


def write_seeds_report(root: Path | str, per_seed: dict[int, dict[str, Any]], title: str) -> dict[str, Any]:
    """``seeds_summary.json`` and ``seeds_report.md`` for a multi-seed cross-validation."""
    root = Path(root)
    summary = seeds_summary(per_seed)
    lines = [
        f"# {title}",
        "",
        f"Seeds {summary['seeds']}; each seed's own report is in `seed_<s>/report.md`.",
        "Mean and sample standard deviation over seeds; the paper's figure beside it.",
        "",
    ]
    for task in ("rootlet", "grade"):
        lines += [
            f"## {task}",
            "",
            "| pair | agreement % | macro F1 % | quadratic kappa | gross errors | paper % |",
            "|---|---|---|---|---|---|",
        ]
        for pair, row in summary[task].items():
            paper = PAPER.get(task, {}).get(pair)
            cells = [
                _mean_sd(row, "accuracy"),
                _mean_sd(row, "f1_macro"),
                _mean_sd(row, "kappa_quadratic", 1, 3),
                _mean_sd(row, "gross_errors", 1, 1),
                str(paper[0]) if paper else "",
            ]
            lines.append(f"| {pair} | " + " | ".join(cells) + " |")
        lines.append("")
    layout = RunLayout(root)
    atomic_write_text(layout.seeds_summary, json.dumps(summary, indent=2))
    atomic_write_text(layout.seeds_report, "\n".join(lines))
    return summary
