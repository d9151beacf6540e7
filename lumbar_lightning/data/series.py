"""Series selection: within a study, the axial T2 series is the one the models see.

Hospital exports put localizers, sagittal and coronal series and sometimes several axial series into one
study. Each series is judged on its own tags (ImageType, orientation from ImageOrientationPatient, series
description, echo time); the study keeps one axial series, the most T2-like, then the one with most slices.
Every other series is excluded with a reason that the ingest report and ``lumbar-predict`` print. Axial series
that share the chosen one's description (angled blocks exported as separate series) are kept with it.

``reference_slices`` gives the grader its series context (``series_reference``): each slice's reference is the
series' brightest (freest) rootlet-level canal, the patient's own measure of a free canal.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

#: A series counts as axial when its slice normal is within this angle of the patient's head-foot axis
#: (lumbar axial blocks are tilted along each disc, typically by up to ~25 degrees).
AXIAL_TOLERANCE_DEG = 35.0
_LOCALIZER = re.compile(r"locali[sz]er|scout|survey|3[- ]?plane|tripilot|aahead", re.IGNORECASE)
_T2 = re.compile(r"t2", re.IGNORECASE)
_NOT_T2 = re.compile(r"t1|flair|stir|dwi|diff|adc|pd[_ ]|spair|dixon", re.IGNORECASE)


@dataclass
class SeriesDecision:
    """Whether one series is used, and why (no patient identifier: the patient is its pseudonym)."""

    patient: str
    series_instance_uid: str
    description: str
    images: int
    orientation: str
    chosen: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def orientation_of(normal: np.ndarray, tolerance_deg: float = AXIAL_TOLERANCE_DEG) -> tuple[str, float]:
    """("axial" | "sagittal" | "coronal" | "unknown", angle in degrees from the head-foot axis)."""
    if not np.all(np.isfinite(normal)) or np.linalg.norm(normal) == 0:
        return "unknown", float("nan")
    normal = np.abs(normal) / np.linalg.norm(normal)
    angle = float(np.degrees(np.arccos(np.clip(normal[2], 0.0, 1.0))))
    if angle <= tolerance_deg:
        return "axial", angle
    return ("sagittal" if normal[0] >= normal[1] else "coronal"), angle


def _t2_score(description: str, echo_time: float) -> int:
    if _T2.search(description):
        return 2
    if _NOT_T2.search(description):
        return -1
    return 1 if np.isfinite(echo_time) and echo_time >= 60.0 else 0


def select_series(
    images: pd.DataFrame, tolerance_deg: float = AXIAL_TOLERANCE_DEG
) -> tuple[pd.DataFrame, list[SeriesDecision]]:
    """The images of each study's chosen axial T2 series, in slice order, and a decision for every series."""
    if images.empty:
        return images, []
    decisions: list[SeriesDecision] = []
    chosen: list[str] = []
    study_key = images["study_instance_uid"].where(images["study_instance_uid"] != "", images["patient"])
    for _, study in images.groupby(study_key, sort=True):
        candidates = []
        for series_uid, series in study.groupby("series_instance_uid", sort=True):
            description = str(series["series_description"].iloc[0])
            normal = series[["normal_x", "normal_y", "normal_z"]].median().to_numpy(dtype=float)
            orientation, angle = orientation_of(normal, tolerance_deg)
            types = " ".join(series["image_type"].astype(str).unique()).upper()
            decision = SeriesDecision(
                str(series["patient"].iloc[0]),
                str(series_uid),
                description,
                len(series),
                orientation,
                False,
                "",
            )
            decisions.append(decision)
            if "LOCALIZER" in types or _LOCALIZER.search(description):
                decision.reason = "localizer"
            elif orientation not in ("axial", "unknown"):
                decision.reason = (
                    f"{orientation}, {angle:.0f} degrees from axial (tolerance {tolerance_deg:.0f})"
                )
            else:
                echo = float(series["echo_time"].median())
                candidates.append(((_t2_score(description, echo), len(series)), decision))
        if not candidates:
            continue
        candidates.sort(key=lambda c: c[0], reverse=True)
        best_score, best = candidates[0][0][0], candidates[0][1]
        for (score, _), decision in candidates:
            # Sites that export each angled block of the axial T2 as its own series give them one description:
            # those blocks are kept together.
            if decision is best or (score == best_score and decision.description == best.description != ""):
                decision.chosen = True
                decision.reason = (
                    "axial T2"
                    if decision.orientation == "axial"
                    else "only candidate (orientation tags missing)"
                )
                chosen.append(decision.series_instance_uid)
            else:
                decision.reason = (
                    f"another axial series of the study was chosen ({best.description!r}, {best.images} images: "
                    "more T2-like or more slices)"
                )
    kept = images[images["series_instance_uid"].isin(chosen)].copy()
    order = kept["slice_position"].where(
        kept["slice_position"].notna(), kept["instance_number"].astype(float)
    )
    kept = kept.assign(_order=order).sort_values(["patient", "series_instance_uid", "_order", "frame"])
    return kept.drop(columns="_order").reset_index(drop=True), decisions


def canal_brightness(patches: np.ndarray) -> np.ndarray:
    """Mean signal of the central half (per side) of each canal patch, (N, H, W) -> (N,).

    On T2 the free dural sac is bright cerebrospinal fluid; stenosis shrinks it and fills it with intermediate
    signal. So the brightest canal of a series is a free one, found the same way on a rater's box and on a
    detected one (on the demo phantom it tracks the sac area at r = 0.72-0.96 per patient on detected boxes,
    where the detected box area, anti-correlated for some patients, did not).
    """
    patches = np.asarray(patches, dtype=np.float32)
    h, w = patches.shape[-2:]
    return patches[..., h // 4 : h - h // 4, w // 4 : w - w // 4].mean(axis=(-2, -1))


def reference_slices(series: np.ndarray, brightness: np.ndarray, rootlet: np.ndarray) -> np.ndarray:
    """Index of each slice's reference: the slice of its series with the brightest canal (``canal_brightness``)
    among the series' rootlet-level slices (among all its slices when it has none).

    Why: how stenotic a canal is depends on how large this patient's canal is where it is free; one slice cut at
    its own box's scale has lost that.
    """
    series = np.asarray(series)
    brightness = np.asarray(brightness, dtype=np.float64)
    rootlet = np.asarray(rootlet, dtype=bool)
    if not len(series) == len(brightness) == len(rootlet):
        raise ValueError(
            f"series, brightness and rootlet differ in length: {len(series)}, {len(brightness)}, {len(rootlet)}"
        )
    refs = np.empty(len(series), dtype=np.int64)
    for key in pd.unique(series):
        members = np.flatnonzero(series == key)
        pool = members[rootlet[members]] if rootlet[members].any() else members
        refs[members] = pool[int(np.argmax(brightness[pool]))]
    return refs
