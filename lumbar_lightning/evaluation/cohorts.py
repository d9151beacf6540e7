"""The generalisation table: one finished CV run per cohort, the pipeline beside the baseline, checked against the
bars every cohort must meet (truth-Ck above the raters' agreement, macro F1, gross errors no worse than the
raters', rootlet/cord against the truth, detection rate).

``lumbar-cohorts 'runs={NAME: RUN_DIR, ...}'`` prints the markdown table and the checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lumbar_lightning.layout import RunLayout

#: The generalisation issue's bars, per cohort and classifier.
BARS = {"f1_macro": 0.80, "rootlet_truth": 0.97, "detection_rate": 0.97}


def _raters(grade: dict[str, Any]) -> list[str]:
    return sorted({p.split("-")[1] for p in grade if p.startswith("truth-A")})


def cohort_rows(run_dir: Path | str) -> list[dict[str, Any]]:
    """One row per classifier k of a run: the pipeline's and the baseline's figures against the truth and rater k,
    the raters' own agreement and gross errors, and whether each bar is met."""
    summary = json.loads(RunLayout(run_dir).summary.read_text())
    grade, rootlet = summary["grade"], summary["rootlet"]
    raters = _raters(grade)
    inter = grade[f"{raters[0]}-{raters[1]}"]["accuracy"] if len(raters) > 1 else float("nan")
    rater_gross = {r: grade[f"truth-{r}"]["gross_errors"] for r in raters}
    rows = []
    for rater in raters:
        k = rater[1:]
        c, b = grade.get(f"truth-C{k}"), grade.get(f"truth-B{k}")
        if c is None:
            continue
        detection = summary["per_fold"][rater]["detection_rate"]["mean"]
        row = {
            "classifier": f"C{k}",
            "truth": c["accuracy"],
            "rater": grade[f"{rater}-C{k}"]["accuracy"],
            "f1_macro": c["f1_macro"],
            "kappa_quadratic": c["kappa_quadratic"],
            "gross_errors": c["gross_errors"],
            "rater_gross_errors": min(rater_gross.values())
            if rater_gross
            else 0,  # the better rater: the bar
            "inter_rater": inter,
            "rootlet_truth": rootlet[f"truth-C{k}"]["accuracy"],
            "detection_rate": detection,
            "baseline": None
            if b is None
            else {
                "truth": b["accuracy"],
                "rater": grade[f"{rater}-B{k}"]["accuracy"],
                "f1_macro": b["f1_macro"],
                "kappa_quadratic": b["kappa_quadratic"],
                "gross_errors": b["gross_errors"],
            },
        }
        row["checks"] = {
            "truth_above_inter_rater": row["truth"] > inter,
            "f1_macro": row["f1_macro"] >= BARS["f1_macro"],
            # "no more disagreements of two grades or more against truth than each rater makes"
            "gross_errors": row["gross_errors"] <= row["rater_gross_errors"],
            "rootlet_truth": row["rootlet_truth"] >= BARS["rootlet_truth"],
            "detection_rate": detection >= BARS["detection_rate"],
            "beats_baseline": b is None or row["truth"] > b["accuracy"],
        }
        rows.append(row)
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def cohort_table(runs: dict[str, Path | str]) -> str:
    """Markdown: cohort x {pipeline, baseline} x {truth-Ck, Ak-Ck, macro F1, quadratic kappa, gross errors}, then
    the bars (a cross marks a missed one)."""
    lines = [
        "| cohort | classifier | truth-C % | A-C % | macro F1 % | quadratic kappa | gross errors (better rater) | "
        "rootlet truth-C % | detection % | A1-A2 % | bars missed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        for row in cohort_rows(run):
            missed = [k for k, ok in row["checks"].items() if not ok]
            lines.append(
                f"| {name} | {row['classifier']} pipeline | {_pct(row['truth'])} | {_pct(row['rater'])} | "
                f"{_pct(row['f1_macro'])} | {row['kappa_quadratic']:.3f} | {row['gross_errors']} "
                f"({row['rater_gross_errors']}) | {_pct(row['rootlet_truth'])} | {_pct(row['detection_rate'])} | "
                f"{_pct(row['inter_rater'])} | {', '.join(missed) or 'none'} |"
            )
            b = row["baseline"]
            if b is not None:
                lines.append(
                    f"| {name} | B{row['classifier'][1:]} baseline | {_pct(b['truth'])} | {_pct(b['rater'])} | "
                    f"{_pct(b['f1_macro'])} | {b['kappa_quadratic']:.3f} | {b['gross_errors']} | | | | |"
                )
    return "\n".join(lines) + "\n"
