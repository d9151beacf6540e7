"""Copy a finished run's result table into an experiment README (between markers), so it is never typed in.

``lumbar-record run_dir=RUN_DIR readme=experiments/demo/README.md [reference=experiments/demo/reference]``
(the reference folder adds the seed-to-seed table from its ``spread.json``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from lumbar_lightning.data.grading import SCHIZAS, active
from lumbar_lightning.evaluation.study import PAPER
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.layout import RunLayout

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def results_block(run_dir: Path) -> str:
    summary = json.loads(RunLayout(run_dir).summary.read_text())
    lines = [BEGIN, "", f"Recorded from `{run_dir.name}` ({summary['images']} test images).", ""]
    for task in ("rootlet", "grade"):
        if not summary[task]:
            continue  # a stage the run did not have
        lines += [
            f"**{task}**",
            "",
            "| pair | n | agreement % | macro F1 % | kappa | paper agreement % | paper F1 % |",
            "|---|---|---|---|---|---|---|",
        ]
        for pair, row in summary[task].items():
            paper = PAPER.get(task, {}).get(pair, ("", "")) if active() == SCHIZAS else ("", "")
            lines.append(
                f"| {pair} | {row['n']} | {100 * row['accuracy']:.1f} | {100 * row['f1_macro']:.1f} | "
                f"{row['kappa']:.3f} | {paper[0]} | {paper[1]} |"
            )
        lines.append("")
    for rater, m in summary.get("per_fold", {}).items():
        lines.append(
            f"- {rater}: {m['seconds']['mean']:.0f} s per fold on average over {m['seconds']['n_folds']} folds; "
            f"detection rate {100 * m['detection_rate']['mean']:.1f} ± {100 * m['detection_rate']['std']:.1f}%"
        )
    timing = RunLayout(run_dir).timing
    if timing.exists():
        lines.append(f"- wall time of the whole run: {json.loads(timing.read_text())['seconds']:.0f} s")
    lines += ["", END]
    return "\n".join(lines)


SPREAD_BEGIN, SPREAD_END = "<!-- spread:begin -->", "<!-- spread:end -->"
#: The seed-spread table's rows: (rater or None for every rater, label, spread.json entry, scale, decimals).
SPREAD_ROWS = (
    ("A1", "detection rate", "detector/test/acc", 100, 1),
    (None, "rootlet/cord agreement", "rootlet/chained/accuracy", 100, 1),
    (None, "grade agreement", "grade/chained/accuracy", 100, 1),
    (None, "grade macro F1", "grade/chained/f1_macro", 100, 1),
    (None, "grade quadratic kappa", "grade/chained/kappa_quadratic", 1, 3),
    (None, "baseline CNN grade agreement (rater boxes)", "baseline/gt_box/test/acc", 100, 1),
)


def spread_block(reference: Path) -> str:
    """The seed-to-seed table from ``<reference>/spread.json``: each headline figure of the recorded fold per seed,
    with its mean and standard deviation."""
    spread = json.loads((Path(reference) / "spread.json").read_text())
    seeds = spread["seeds"]
    lines = [
        SPREAD_BEGIN,
        "",
        f"| rater | figure | seeds {' / '.join(str(s) for s in seeds)} | mean | sd |",
        "|---|---|---|---|---|",
    ]
    for rater, values in spread["values"].items():
        for only, label, key, scale, digits in SPREAD_ROWS:
            if (only and only != rater) or key not in values:
                continue
            v = np.asarray(values[key], dtype=float) * scale
            cells = " / ".join(f"{x:.{digits}f}" for x in v)
            lines.append(
                f"| {rater} | {label} | {cells} | {v.mean():.{digits}f} | {v.std(ddof=1):.{digits}f} |"
            )
    lines += ["", SPREAD_END]
    return "\n".join(lines)


def replace_block(readme: Path | str, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the README's block."""
    readme = Path(readme)
    text = readme.read_text() if readme.exists() else f"# {readme.parent.name}\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    atomic_write_text(readme, text)


def record(run_dir: Path | str, readme: Path | str, reference: Path | str | None = None) -> None:
    """The run's result table into ``readme``; with ``reference``, also its seed-spread table."""
    replace_block(readme, results_block(Path(run_dir)))
    if reference is not None and (Path(reference) / "spread.json").exists():
        replace_block(readme, spread_block(Path(reference)), SPREAD_BEGIN, SPREAD_END)
