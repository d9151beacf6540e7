"""``samples.png``: the phantom by eye, one row per class (cord, grade A-D), rater boxes drawn."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pydicom

from lumbar_lightning.data.dicom.pixels import decode_pixels
from lumbar_lightning.data.dicom.scan import iter_files

ROWS = (("cord", "cord"), ("A", "grade A"), ("B", "grade B"), ("C", "grade C"), ("D", "grade D"))
RATER_COLOURS = {"A1": "#ff4040", "A2": "#40a0ff"}


def _pick(truth: pd.DataFrame, key: str, n: int) -> pd.DataFrame:
    """``n`` examples of a class, spread over patients, most typical first (by severity rank)."""
    rows = truth[truth["level"] == "cord"] if key == "cord" else truth[truth["grade"] == key]
    if rows.empty:
        return rows
    rows = rows.drop_duplicates("patient_index")
    take = np.linspace(0, len(rows) - 1, num=min(n, len(rows))).round().astype(int)
    return rows.iloc[take]


def samples_figure(root: Path | str, out_png: Path | str, per_row: int = 5, crop_mm: float = 55.0) -> Path:
    """Draw, for each class, one full slice and zoomed canal crops with both raters' boxes."""
    root = Path(root)
    truth = pd.read_csv(root / "truth.csv", dtype={"grade": str}, keep_default_na=False)
    labels = pd.read_csv(root / "labels.csv", dtype={"grade": str}, keep_default_na=False)
    paths = {}
    for path in iter_files(root / "dicom"):  # every file: some vendors write no extension
        paths[
            str(
                pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
                ).SOPInstanceUID
            )
        ] = path
    fig, axes = plt.subplots(len(ROWS), per_row + 1, figsize=(2.2 * (per_row + 1), 2.3 * len(ROWS)))
    for r, (key, title) in enumerate(ROWS):
        picks = _pick(truth, key, per_row)
        for c in range(per_row + 1):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=11)
            i = max(c - 1, 0)
            if i >= len(picks):
                ax.axis("off")
                continue
            row = picks.iloc[i]
            ds = pydicom.dcmread(paths[row["sop_instance_uid"]])
            img = decode_pixels(ds)
            ax.imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img, 99.5))
            spacing = float(ds.PixelSpacing[0])
            for _, lab in labels[labels["sop_instance_uid"] == row["sop_instance_uid"]].iterrows():
                colour = RATER_COLOURS.get(lab["analyzer"], "yellow")
                ax.add_patch(
                    plt.Rectangle(
                        (lab["x_min"], lab["y_min"]),
                        lab["x_max"] - lab["x_min"],
                        lab["y_max"] - lab["y_min"],
                        fill=False,
                        lw=1.0,
                        color=colour,
                    )
                )
            if c > 0:  # zoom on the canal
                cx, cy = (row["x_min"] + row["x_max"]) / 2, (row["y_min"] + row["y_max"]) / 2
                half = crop_mm / spacing / 2
                ax.set_xlim(cx - half, cx + half)
                ax.set_ylim(cy + half, cy - half)
                calls = labels[labels["sop_instance_uid"] == row["sop_instance_uid"]]
                said = " ".join(
                    f"{a}:{g or 'cord' if lv == 'cord' else g}"
                    for a, g, lv in zip(calls["analyzer"], calls["grade"], calls["level"], strict=True)
                )
                ax.set_title(f"{row['vertebral_level']} {said}", fontsize=7)
            else:
                ax.set_title(f"{row['vertebral_level']} (full slice)", fontsize=7)
    fig.suptitle("lumbar-lightning phantom: truth class per row; boxes A1 red, A2 blue", fontsize=11)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
