"""Copy a finished run's result table into an experiment README (between markers), so it is never typed in.

``python -m lumbar_lightning.evaluation.record RUN_DIR experiments/demo/README.md``
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from lumbar_lightning.evaluation.study import PAPER
from lumbar_lightning.io import atomic_write_text

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def results_block(run_dir: Path) -> str:
    summary = json.loads((run_dir / "cv_summary.json").read_text())
    lines = [BEGIN, "", f"Recorded from `{run_dir.name}` ({summary['images']} test images).", ""]
    for task in ("rootlet", "grade"):
        lines += [f"**{task}**", "", "| pair | n | agreement % | macro F1 % | kappa | paper agreement % | paper F1 % |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for pair, row in summary[task].items():
            paper = PAPER.get(task, {}).get(pair, ("", ""))
            lines.append(f"| {pair} | {row['n']} | {100 * row['accuracy']:.1f} | {100 * row['f1_macro']:.1f} | "
                         f"{row['kappa']:.3f} | {paper[0]} | {paper[1]} |")  # fmt: skip
        lines.append("")
    for rater, m in summary.get("per_fold", {}).items():
        lines.append(f"- {rater}: {m['seconds']['mean']:.0f} s per fold on average over {m['seconds']['n_folds']} folds; "
                     f"detection rate {100 * m['detection_rate']['mean']:.1f} ± {100 * m['detection_rate']['std']:.1f}%")  # fmt: skip
    timing = run_dir / "timing.json"
    if timing.exists():
        lines.append(f"- wall time of the whole run: {json.loads(timing.read_text())['seconds']:.0f} s")
    lines += ["", END]
    return "\n".join(lines)


def replace_block(readme: Path | str, block: str) -> None:
    """Put ``block`` (which starts with BEGIN and ends with END) in place of the README's recorded block."""
    readme = Path(readme)
    text = readme.read_text() if readme.exists() else f"# {readme.parent.name}\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    atomic_write_text(readme, text)


def record(run_dir: Path | str, readme: Path | str) -> None:
    replace_block(readme, results_block(Path(run_dir)))


if __name__ == "__main__":
    record(sys.argv[1], sys.argv[2])
