"""Confusion-matrix figures, in the layout of the paper's figures (reference reader on the rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig: Any, out_png: Path | str) -> Path:
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, metadata={"Software": "lumbar-lightning"})
    plt.close(fig)
    return out_png


def confusion_grid(
    tables: dict[str, dict[str, Any]], pairs: list[str], title: str, out_png: Path | str
) -> Path:
    """One panel per pair: counts with row-normalised shading, agreement and n in the panel title."""
    pairs = [p for p in pairs if p in tables and tables[p].get("n")]
    cols = max(1, min(4, len(pairs)))
    rows = max(1, int(np.ceil(len(pairs) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(pairs) :]:
        ax.axis("off")
    for ax, pair in zip(axes.flat, pairs, strict=False):
        row = tables[pair]
        cm = np.asarray(row["confusion_matrix"], dtype=float)
        classes = row["classes"]
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        a, b = pair.split("-", 1)
        ax.set_xticks(range(len(classes)), classes, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_ylabel(a)
        ax.set_xlabel(b)
        ax.set_title(f"{pair}: {100 * row['accuracy']:.1f}% (n={row['n']})", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return _save(fig, out_png)


def worst_cases(predictions: Any, n: int = 12) -> Any:
    """The most confident wrong grades of the chained pipeline, errors of two grades or more first.

    ``predictions``: every fold's ``predictions.csv`` of a run, concatenated (one row per image and classifier).
    The reference is the truth where the data set has one, else the rater the classifier learnt from.
    """
    import pandas as pd

    from lumbar_lightning.data.labels import grades as scheme_grades

    grades = list(scheme_grades())
    frame = predictions.copy()
    truth = "grade_truth" in frame and (frame["grade_truth"] != "").any()
    frame["reference"] = (
        frame["grade_truth"] if truth else [row[f"grade_{row['trained_on']}"] for _, row in frame.iterrows()]
    )
    frame = frame[(frame["pred_grade"] != "") & (frame["reference"] != "")]
    frame = frame[frame["pred_grade"] != frame["reference"]]
    if frame.empty:
        return pd.DataFrame(columns=[*predictions.columns, "reference", "confidence", "distance"])
    index = {g: i for i, g in enumerate(grades)}
    frame = frame.assign(
        confidence=[float(row[f"p_{row['pred_grade']}"]) for _, row in frame.iterrows()],
        distance=(frame["pred_grade"].map(index) - frame["reference"].map(index)).abs(),
    )
    frame = frame.sort_values(["distance", "confidence"], ascending=False, kind="stable")
    return frame.drop_duplicates("sop_instance_uid").head(n)


def case_title(row: Any, raters: list[str]) -> str:
    """A worst case's panel title: the call, its confidence, the reference, then each rater's grade ('-' where
    the rater left the image ungraded). A rater's column is missing (NaN) on rows of classifiers whose
    predictions never carried it, e.g. the consensus rater's on C1's rows of a run with Cc: it is left out."""
    import pandas as pd

    from lumbar_lightning.evaluation.study import classifier_name

    said = " ".join(f"{r}:{row[f'grade_{r}'] or '-'}" for r in raters if not pd.isna(row.get(f"grade_{r}")))
    call = f"{classifier_name(str(row['trained_on']))} {row['pred_grade']} ({100 * row['confidence']:.0f}%)"
    return f"{call}, ref {row['reference']}\n{said}  {row['vertebral_level']} {row['patient']}"


def failure_grid(cases: Any, image_of: Any, out_png: Path | str, crop_factor: float = 3.0) -> Path:
    """One panel per case: the canal region with the detected box, the call, its confidence, the raters' grades
    and the reference. Patients appear by pseudonym only."""
    n = max(1, len(cases))
    cols = min(6, n)
    rows = int(np.ceil(n / cols))
    # 3.0 in a row: room for each panel's two-line title above the patch
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(cases) :]:
        ax.axis("off")
    raters = sorted(
        c[len("grade_") :] for c in cases.columns if c.startswith("grade_") and c != "grade_truth"
    )
    for ax, (_, row) in zip(axes.flat, cases.iterrows(), strict=False):
        image = np.asarray(image_of(row["sop_instance_uid"]), dtype=np.float32)
        x0, y0, x1, y1 = (float(row[f"pred_{k}"]) for k in ("x_min", "y_min", "x_max", "y_max"))
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, crop_factor * max(x1 - x0, y1 - y0) / 2
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.0, color="#ffcc00"))
        ax.set_xlim(cx - half, cx + half)
        ax.set_ylim(cy + half, cy - half)
        ax.set_title(
            case_title(row, raters), fontsize=6.5, color="#b00000" if row["distance"] >= 2 else "black"
        )
    fig.suptitle(
        "Most confident wrong grades (red: two grades or more off); detected box in yellow", fontsize=9
    )
    return _save(fig, out_png)


def reliability_figure(calibration: dict[str, dict[str, Any]], out_png: Path | str) -> Path:
    """One panel per rater and stage: accuracy against confidence per bin, before and after temperature scaling
    (pooled test folds); the diagonal is perfect calibration, the bars the share of images per bin."""
    panels = [(rater, stage, row) for rater, stages in calibration.items() for stage, row in stages.items()]
    cols = max(1, min(3, len(panels)))
    rows = max(1, int(np.ceil(len(panels) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (rater, stage, row) in zip(axes.flat, panels, strict=False):
        ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
        for key, colour, name in (("bins_before", "#e4572e", "before"), ("bins_after", "#1f77b4", "after")):
            count = np.asarray(row[key]["count"], dtype=float)
            used = count > 0
            conf = np.asarray(row[key]["confidence"])[used] / count[used]
            acc = np.asarray(row[key]["hits"])[used] / count[used]
            ece = row["ece_before" if key == "bins_before" else "ece_after"]
            ax.plot(conf, acc, marker="o", ms=3, color=colour, label=f"{name}: ECE {100 * ece:.1f}%")
        count = np.asarray(row["bins_after"]["count"], dtype=float)
        edges = np.linspace(0, 1, len(count) + 1)
        ax.bar(
            edges[:-1],
            0.25 * count / max(count.sum(), 1),
            width=np.diff(edges),
            align="edge",
            color="#1f77b4",
            alpha=0.15,
        )
        t = np.asarray(row["temperature"], dtype=float)
        ax.set_title(f"{rater} {stage}: T {t.mean():.2f} ({t.min():.2f}-{t.max():.2f})", fontsize=9)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "Reliability on the test folds (rater's boxes), before and after temperature scaling", fontsize=10
    )
    return _save(fig, out_png)


def referral_figure(referral: dict[str, Any], out_png: Path | str) -> Path:
    """Agreement on the images kept against coverage, the least confident referred first; the raters' own
    agreement as the line to beat and five points above it as the target."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for pair, curve in referral.get("pairs", {}).items():
        ax.plot(
            100 * np.asarray(curve["coverage"]),
            100 * np.asarray(curve["accuracy"]),
            marker="o",
            ms=3,
            label=pair,
        )
    if "rater_agreement" in referral:
        line = 100 * referral["rater_agreement"]
        ax.axhline(line, color="#555555", lw=1, ls="--", label=f"raters agree {line:.1f}%")
        ax.axhline(line + 5, color="#555555", lw=0.8, ls=":", label="raters + 5 points")
    ax.set_xlabel("coverage: images graded, % (least confident referred)", fontsize=8)
    ax.set_ylabel("grade agreement on graded images, %", fontsize=8)
    ax.invert_xaxis()
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Referral: agreement against coverage", fontsize=10)
    return _save(fig, out_png)
