"""Compare two finished cross-validation runs on their common test images (Classifier1 vs Classifier2, or two
hyperparameter settings): agreement tables, McNemar per image, paired t-tests per fold, and what is significant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.evaluation.agreement import agreement
from lumbar_lightning.evaluation.figures import confusion_grid
from lumbar_lightning.evaluation.statistics import bootstrap_ci, mcnemar, paired_fold_ttest
from lumbar_lightning.evaluation.study import load_cv_predictions, readers, task_classes
from lumbar_lightning.io import atomic_write_text

ALPHA = 0.05


def _merge(run_a: Path, run_b: Path) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """Common images of both runs: shared reader columns once, each run's classifiers suffixed @a / @b."""
    a, b = load_cv_predictions(run_a), load_cv_predictions(run_b)
    who_a, who_b = readers(a), readers(b)
    refs = [r for r in who_a["raters"] + who_a["truth"] if r in who_b["raters"] + who_b["truth"]]
    for frame, who, tag in ((a, who_a, "a"), (b, who_b, "b")):
        frame.rename(
            columns={
                f"{k}_{c}": f"{k}_{c}@{tag}" for c in who["classifiers"] for k in ("level", "grade", "fold")
            },
            inplace=True,
        )
    merged = a.merge(b, on="sop_instance_uid", suffixes=("", "@b"))
    if merged.empty:
        raise DataContractError(
            f"{run_a} and {run_b} share no test image: were they run on the same data set?"
        )
    for ref in refs:
        for col in (f"level_{ref}", f"grade_{ref}"):
            if not (merged[col] == merged[f"{col}@b"]).all():
                raise DataContractError(
                    f"{run_a} and {run_b} disagree on {col}: they were run on different labels"
                )
    classifiers_a = [f"{c}@a" for c in who_a["classifiers"]]
    classifiers_b = [f"{c}@b" for c in who_b["classifiers"]]
    return merged, refs, classifiers_a, classifiers_b


def _per_fold_accuracy(frame: pd.DataFrame, ref_col: str, pred_col: str, fold_col: str) -> dict[str, float]:
    return {str(k): float(np.mean(g[ref_col] == g[pred_col])) for k, g in frame.groupby(fold_col)}


def compare_runs(run_a: Path | str, run_b: Path | str, seed: int = 0) -> dict[str, Any]:
    run_a, run_b = Path(run_a), Path(run_b)
    frame, refs, cls_a, cls_b = _merge(run_a, run_b)
    out: dict[str, Any] = {"run_a": str(run_a), "run_b": str(run_b), "images": len(frame), "alpha": ALPHA}
    for task, classes in task_classes().items():
        col = "level" if task == "rootlet" else "grade"
        keep = np.ones(len(frame), dtype=bool)
        for name in refs + cls_a + cls_b:
            keep &= (frame[f"{col}_{name}"] != "").to_numpy()
        data = frame[keep]
        table = {}
        for ref in refs:
            for c in cls_a + cls_b:
                row = agreement(data[f"{col}_{ref}"], data[f"{col}_{c}"], classes)
                row["accuracy_ci95"] = list(
                    bootstrap_ci(data[f"{col}_{ref}"], data[f"{col}_{c}"], data["patient"], seed=seed)
                )
                table[f"{ref}-{c}"] = row
        tests = {}
        for ref in refs:
            for ca in cls_a:
                for cb in cls_b:
                    mc = mcnemar(data[f"{col}_{ref}"], data[f"{col}_{ca}"], data[f"{col}_{cb}"])
                    fa = _per_fold_accuracy(data, f"{col}_{ref}", f"{col}_{ca}", f"fold_{ca}")
                    fb = _per_fold_accuracy(data, f"{col}_{ref}", f"{col}_{cb}", f"fold_{cb}")
                    folds = sorted(set(fa) & set(fb))
                    ft = paired_fold_ttest([fa[k] for k in folds], [fb[k] for k in folds])
                    tests[f"{ref}: {ca} vs {cb}"] = {
                        "accuracy_a": table[f"{ref}-{ca}"]["accuracy"],
                        "accuracy_b": table[f"{ref}-{cb}"]["accuracy"],
                        "mcnemar": mc,
                        "per_fold_ttest": {**ft, "folds": len(folds)},
                        "significant": bool(mc["p"] < ALPHA or (np.isfinite(ft["p"]) and ft["p"] < ALPHA)),
                    }
        out[task] = {"n": len(data), "agreement": table, "tests": tests}
    return out


def render_comparison(result: dict[str, Any]) -> str:
    lines = [
        "# Run comparison",
        "",
        f"- a: `{result['run_a']}`",
        f"- b: `{result['run_b']}`",
        f"- common test images: {result['images']}; significance at p < {result['alpha']}",
        "",
    ]
    for task in task_classes():
        part = result[task]
        lines += [
            f"## {task} (n = {part['n']})",
            "",
            "| pair | agreement % (95% CI) | macro F1 % | kappa |",
            "|---|---|---|---|",
        ]
        for pair, row in part["agreement"].items():
            lo, hi = row["accuracy_ci95"]
            lines.append(
                f"| {pair} | {100 * row['accuracy']:.1f} ({100 * lo:.1f}-{100 * hi:.1f}) | {100 * row['f1_macro']:.1f} | {row['kappa']:.3f} |"
            )
        lines += [
            "",
            "| reference: a vs b | a % | b % | McNemar p | per-fold t-test p | significant |",
            "|---|---|---|---|---|---|",
        ]
        for name, t in part["tests"].items():
            lines.append(
                f"| {name} | {100 * t['accuracy_a']:.1f} | {100 * t['accuracy_b']:.1f} | {t['mcnemar']['p']:.3g} | "
                f"{t['per_fold_ttest']['p']:.3g} | {'yes' if t['significant'] else 'no'} |"
            )
        lines += ["", f"![{task}](comparison_{task}.png)", ""]
    return "\n".join(lines)


def write_comparison(
    run_a: Path | str, run_b: Path | str, out_dir: Path | str, seed: int = 0
) -> dict[str, Any]:
    """Write ``comparison.json``, ``comparison.md`` and one confusion-matrix PNG per task into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = compare_runs(run_a, run_b, seed)
    for task in task_classes():
        table = result[task]["agreement"]
        confusion_grid(
            table,
            list(table),
            f"{task}: a vs b classifiers (reference on rows)",
            out_dir / f"comparison_{task}.png",
        )
    atomic_write_text(out_dir / "comparison.json", json.dumps(result, indent=2, default=float))
    atomic_write_text(out_dir / "comparison.md", render_comparison(result))
    return result
