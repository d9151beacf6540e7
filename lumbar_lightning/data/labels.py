"""``labels.csv`` under the data contract: validation row by row, the raters' intersection, grade distributions."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar_lightning.data.consensus import NO_VOTE, ConsensusModel, VoteShares, hard_calls, vote_matrix
from lumbar_lightning.data.dicom.headers import image_key
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.grading import active


def grades() -> tuple[str, ...]:
    """The grade classes of the active scheme (``grading=``), in order of severity."""
    return active().classes


LEVELS = ("rootlet", "cord")
#: Class index of each level: the rootlet classifier's single logit is P(rootlet).
LEVEL_INDEX = {"cord": 0, "rootlet": 1}
#: The rootlet classifier's classes in index order.
LEVEL_CLASSES = tuple(sorted(LEVEL_INDEX, key=LEVEL_INDEX.__getitem__))
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
REQUIRED_COLUMNS = ("analyzer", "sop_instance_uid", *BOX_COLUMNS, "level", "grade")
#: The labels CSV as the data contract writes it (the phantoms and tests write exactly these columns).
CSV_COLUMNS = [*REQUIRED_COLUMNS, "vertebral_level"]
LABEL_COLUMNS = [*CSV_COLUMNS, "line"]
#: The pseudo-rater whose canal box on an image is the mean of every rater's box there: what a rater-neutral
#: detector learns (the study's detector "trains the bounding boxes labeled by experts"), so one detector per fold
#: serves Classifier1 and Classifier2 alike.
CONSENSUS = "consensus"


@dataclass
class RejectedRow:
    """A labels.csv row that breaks the contract: its 1-based line number in the file and the rule it breaks."""

    line: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass
class LabelTable:
    """Accepted label rows (one per rater and image) and the rejected ones, per rater."""

    rows: pd.DataFrame
    rejected: dict[str, list[RejectedRow]] = field(default_factory=dict)

    @property
    def raters(self) -> list[str]:
        return sorted(self.rows["analyzer"].unique().tolist())

    def for_rater(self, rater: str) -> pd.DataFrame:
        """One rater's rows, indexed by ``sop_instance_uid`` (``CONSENSUS``: every rater's votes, ``consensus``)."""
        if rater == CONSENSUS:
            return self.consensus()
        if rater not in self.raters:
            raise DataContractError(f"rater {rater!r} has no accepted labels (raters present: {self.raters})")
        return self.rows[self.rows["analyzer"] == rater].set_index("sop_instance_uid", drop=False)

    def consensus(self, model: ConsensusModel | None = None, fit: list[str] | None = None) -> pd.DataFrame:
        """One row per image that any rater labelled: the mean of the raters' boxes, and the consensus of their calls.

        ``rootlet_share`` is the consensus probability that the slice is at rootlet level, ``grade_share_<G>`` that
        its grade is G (what a consensus classifier learns as soft targets): with ``model`` ``VoteShares`` (the
        default) each class's share of the raters' votes; with ``DawidSkene`` the latent-truth posterior, fitted on
        the images in ``fit`` (the training split; default: all). ``level`` and ``grade`` are the most probable calls,
        for class balance, priors and metrics; ties go to rootlet and to the more severe grade, the side a missed
        stenosis lies on. Other columns are the first rater's (by name).
        """
        model = model or VoteShares()
        rows = self.rows.sort_values(["sop_instance_uid", "analyzer"], kind="stable")
        out = rows.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid", drop=False)
        out[list(BOX_COLUMNS)] = (
            rows.groupby("sop_instance_uid", sort=False)[list(BOX_COLUMNS)].mean().loc[out.index].to_numpy()
        )
        wide = rows.pivot(index="sop_instance_uid", columns="analyzer").reindex(out.index)
        grade_calls = wide["grade"].where(wide["level"] == "rootlet", "").fillna("")
        fit_mask = None if fit is None else out.index.isin(fit)
        level_votes = vote_matrix(wide["level"].fillna("").to_numpy().tolist(), LEVEL_CLASSES)
        grade_votes = vote_matrix(grade_calls.to_numpy().tolist(), grades())
        level_p = model.posterior(level_votes, len(LEVEL_CLASSES), fit_mask)
        grade_p = model.posterior(grade_votes, len(grades()), fit_mask)
        graded = (grade_votes != NO_VOTE).any(axis=1)
        grade_p[~graded] = 0.0
        out["rootlet_share"] = level_p[:, LEVEL_INDEX["rootlet"]]
        for g, column in zip(grades(), grade_p.T, strict=True):
            out[f"grade_share_{g}"] = column
        out["level"] = np.asarray(LEVEL_CLASSES)[hard_calls(level_p)]
        out["grade"] = np.where(
            graded & (out["level"] == "rootlet"), np.asarray(grades())[hard_calls(grade_p)], ""
        )
        return out.assign(analyzer=CONSENSUS)

    def intersection(self, raters: list[str] | None = None) -> list[str]:
        """SOPInstanceUIDs labelled by every named rater (default: all raters): the paper's fair comparison set."""
        raters = raters or self.raters
        sets = [set(self.rows.loc[self.rows["analyzer"] == r, "sop_instance_uid"]) for r in raters]
        return sorted(set.intersection(*sets)) if sets else []

    def wide(self, raters: list[str] | None = None) -> pd.DataFrame:
        """Intersection images with one ``level_<rater>`` and ``grade_<rater>`` column per rater."""
        raters = raters or self.raters
        uids = self.intersection(raters)
        out = pd.DataFrame({"sop_instance_uid": uids}).set_index("sop_instance_uid")
        for r in raters:
            part = self.for_rater(r).loc[uids]
            out[f"level_{r}"] = part["level"].to_numpy()
            out[f"grade_{r}"] = part["grade"].to_numpy()
        return out.reset_index()

    def grade_distribution(self) -> dict[str, dict[str, float]]:
        """Per rater, the share of each grade among its graded rows (the paper's 78.8/15.4/4.2/1.6 line)."""
        out: dict[str, dict[str, float]] = {}
        for r in self.raters:
            g = self.rows.loc[(self.rows["analyzer"] == r) & (self.rows["grade"] != ""), "grade"]
            n = len(g)
            out[r] = {k: (float((g == k).sum()) / n if n else 0.0) for k in grades()}
        return out

    def report(self) -> dict[str, dict[str, Any]]:
        """Per rater: accepted row count and rejected rows, for the ingest report."""
        raters = sorted(set(self.raters) | set(self.rejected))
        return {
            r: {
                "accepted": int((self.rows["analyzer"] == r).sum()),
                "rejected": [x.as_dict() for x in self.rejected.get(r, [])],
            }
            for r in raters
        }


def parse_number(value: str, column: str) -> float:
    """A CSV cell as a finite float; ``ValueError`` naming the column and the value otherwise."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{column}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{column}={value!r} is not a finite number")
    return number


def _unknown(key: str, excluded: dict[str, str] | None, what: str) -> str:
    if excluded and key in excluded:
        return f"image not used: {what} is in a series that was excluded ({excluded[key]})"
    return f"unknown image: {what} is not among the ingested images"


def validate_row(
    row: dict[str, str], image_sizes: dict[str, tuple[int, int]], excluded: dict[str, str] | None = None
) -> dict[str, Any]:
    """One labels.csv row as typed values; raises ``ValueError`` naming the first rule it breaks."""
    analyzer = (row.get("analyzer") or "").strip()
    if not analyzer:
        raise ValueError("empty analyzer")
    uid = (row.get("sop_instance_uid") or "").strip()
    frame_text = (row.get("frame") or "").strip()
    if frame_text:  # a frame of an enhanced multi-frame object (1-based, as DICOM numbers frames)
        if not frame_text.isdigit() or int(frame_text) < 1:
            raise ValueError(f"frame {frame_text!r} is not a frame number (1, 2, ...)")
        key = image_key(uid, int(frame_text))
        if key not in image_sizes and uid in image_sizes and int(frame_text) == 1:
            key = uid  # frame 1 of a single-frame image is the image
        if key not in image_sizes:
            raise ValueError(_unknown(key, excluded, f"frame {frame_text} of sop_instance_uid {uid!r}"))
        uid = key
    elif uid not in image_sizes:
        raise ValueError(_unknown(uid, excluded, f"sop_instance_uid {uid!r}"))
    box = {c: parse_number((row.get(c) or "").strip(), c) for c in BOX_COLUMNS}
    if not (box["x_min"] < box["x_max"] and box["y_min"] < box["y_max"]):
        raise ValueError(f"inverted or empty box: need x_min < x_max and y_min < y_max, got {box}")
    rows, cols = image_sizes[uid]
    if box["x_min"] < 0 or box["y_min"] < 0 or box["x_max"] > cols or box["y_max"] > rows:
        raise ValueError(f"box {box} is outside the {cols}x{rows} image (columns x rows)")
    level = (row.get("level") or "").strip()
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: must be one of {', '.join(LEVELS)}")
    grade = (row.get("grade") or "").strip()
    if grade and grade not in grades():
        raise ValueError(f"unknown grade {grade!r}: must be one of {', '.join(grades())} or empty")
    if level == "cord" and grade:
        raise ValueError(f"a grade ({grade}) on a cord row: grades apply to rootlet level only")
    return {
        "analyzer": analyzer,
        "sop_instance_uid": uid,
        **box,
        "level": level,
        "grade": grade,
        "vertebral_level": (row.get("vertebral_level") or "").strip(),
    }


def load_labels(
    csv_path: Path,
    image_sizes: dict[str, tuple[int, int]],
    analyzer: str | None = None,
    excluded: dict[str, str] | None = None,
) -> LabelTable:
    """Read and validate ``labels.csv``; ``image_sizes`` maps each ingested SOPInstanceUID to (rows, columns).

    With ``analyzer`` set, the file has no ``analyzer`` column and every row is that rater's (``truth.csv``).
    Line numbers count the header as line 1, as a text editor shows them.
    """
    required = [c for c in REQUIRED_COLUMNS if not (analyzer and c == "analyzer")]
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataContractError(f"{csv_path}: labels file not found")
    accepted: list[dict[str, Any]] = []
    rejected: dict[str, list[RejectedRow]] = {}
    seen: dict[tuple[str, str], int] = {}
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataContractError(
                    f"{csv_path}: line 1: missing required column(s) {', '.join(missing)}"
                )
            reader.fieldnames = header
            line = 1
            for raw in reader:
                start, line = line + 1, reader.line_num
                if analyzer:
                    raw["analyzer"] = analyzer
                rater = (raw.get("analyzer") or "").strip() or "?"
                if None in raw:
                    rejected.setdefault(rater, []).append(
                        RejectedRow(start, "more fields than the header has")
                    )
                    continue
                try:
                    row = validate_row(raw, image_sizes, excluded)
                except ValueError as exc:
                    rejected.setdefault(rater, []).append(RejectedRow(start, str(exc)))
                    continue
                key = (row["analyzer"], row["sop_instance_uid"])
                if key in seen:
                    rejected.setdefault(rater, []).append(
                        RejectedRow(
                            start, f"rater {key[0]} labels image {key[1]} twice (first on line {seen[key]})"
                        )
                    )
                    continue
                seen[key] = start
                accepted.append({**row, "line": start})
    except UnicodeDecodeError as exc:
        raise DataContractError(f"{csv_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataContractError(f"{csv_path}: malformed CSV ({exc})") from None
    return LabelTable(rows=pd.DataFrame(accepted, columns=LABEL_COLUMNS), rejected=rejected)
