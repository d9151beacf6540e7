"""Confusion-matrix figures, in the layout of the paper's figures (reference reader on the rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


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
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=9,
                        color="white" if share[i, j] > 0.6 else "black")  # fmt: skip
        a, b = pair.split("-", 1)
        ax.set_xticks(range(len(classes)), classes, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_ylabel(a)
        ax.set_xlabel(b)
        ax.set_title(f"{pair}: {100 * row['accuracy']:.1f}% (n={row['n']})", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, metadata={"Software": "lumbar-lightning"})
    plt.close(fig)
    return out_png
