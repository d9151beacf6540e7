"""A data set in the contract, ingested: image index and cache, labels per rater, optional truth, and folds."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import astuple, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar_lightning.data.dicom.cache import ImageCache
from lumbar_lightning.data.dicom.scan import DicomIndex, SkippedFile, scan_dicom
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.folds import StratifiedPatientFolds, stratum
from lumbar_lightning.data.grading import active
from lumbar_lightning.data.labels import LabelTable, grades, load_labels
from lumbar_lightning.data.series import SeriesDecision, select_series
from lumbar_lightning.data.transforms import PatchGeometry, resize_image

TRUTH_RATER = "truth"
#: Cached images kept in memory per process (float16, least recently used out first), in MiB: one CV worker cuts
#: each image about nine times (detector input, both raters' patches at two contexts, series references), and
#: reading the .npy each time was most of a worker's first fold (50 of 144 s on the demo phantom).
PIXEL_MEMORY_MB = float(os.environ.get("LUMBAR_PIXEL_MEMORY_MB", "1024"))


def check_grading(root: Path) -> None:
    """A data set that declares its grading scheme (``dataset.json``, written by ``lumbar-ingest format=...``) is
    read only under that scheme: one sentence saying which ``grading=`` to run with, not a rejected-row storm."""
    manifest = root / "dataset.json"
    if not manifest.is_file():
        return
    try:
        declared = json.loads(manifest.read_text()).get("grading")
    except (json.JSONDecodeError, AttributeError):
        raise DataContractError(f"{manifest}: not a JSON object") from None
    scheme = active()
    if declared and declared != scheme.name:
        raise DataContractError(
            f"{manifest}: this data set is graded in the {declared!r} scheme; run with grading={declared} "
            f"(the run's scheme is {scheme.name!r}: {', '.join(scheme.classes)})"
        )


@dataclass
class LumbarDataset:
    """Everything the models and reports need from one data-set folder; built once by ``LumbarDataset.ingest``."""

    root: Path
    index: DicomIndex
    labels: LabelTable
    truth: LabelTable | None
    cache: ImageCache
    series: list[SeriesDecision] = field(default_factory=list)
    _resized: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)
    _patches: dict[tuple[Any, ...], np.ndarray] = field(default_factory=dict, repr=False)
    _pixels: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict, repr=False)
    _pixel_bytes: int = field(default=0, repr=False)

    @classmethod
    def ingest(
        cls, root: Path | str, cache_dir: Path | str | None = None, salt: str = "lumbar-lightning"
    ) -> LumbarDataset:
        """Scan ``<root>/dicom`` into the cache and validate ``labels.csv`` (and ``truth.csv`` if present).

        Raises ``DataContractError`` when nothing usable remains: no readable image or no valid label.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataContractError(f"data set folder {root} does not exist")
        check_grading(root)
        cache = ImageCache(Path(cache_dir) if cache_dir else root / ".cache")
        index = scan_dicom(root / "dicom", cache, salt)
        if index.images.empty:
            raise DataContractError(
                f"no readable image under {root / 'dicom'} ({len(index.skipped)} file(s) skipped)"
            )
        all_images = index.images
        index.images, series = select_series(all_images)
        if index.images.empty:
            raise DataContractError(
                f"no axial series under {root / 'dicom'}: all {len(series)} series were excluded "
                f"({'; '.join(sorted({d.reason for d in series}))})"
            )
        excluded = {d.series_instance_uid: d.reason for d in series if not d.chosen}
        not_used = {
            uid: excluded[s]
            for uid, s in all_images[["sop_instance_uid", "series_instance_uid"]].itertuples(index=False)
            if s in excluded
        }
        sizes = {
            uid: (int(r), int(c))
            for uid, r, c in index.images[["sop_instance_uid", "rows", "columns"]].itertuples(index=False)
        }
        labels = load_labels(root / "labels.csv", sizes, excluded=not_used)
        if labels.rows.empty:
            n_bad = sum(len(v) for v in labels.rejected.values())
            raise DataContractError(f"{root / 'labels.csv'} has no valid label row ({n_bad} rejected)")
        truth = None
        if (root / "truth.csv").is_file():
            truth = load_labels(root / "truth.csv", sizes, analyzer=TRUTH_RATER, excluded=not_used)
        return cls(root=root, index=index, labels=labels, truth=truth, cache=cache, series=series)

    def image(self, sop_instance_uid: str) -> np.ndarray:
        """The cached image as float32 in [0, 1] (what ``ImageCache.get`` returns, bit for bit)."""
        return self._held(sop_instance_uid).astype(np.float32)

    def _held(self, sop_instance_uid: str) -> np.ndarray:
        """The cached image as stored (float16), held in memory up to ``PIXEL_MEMORY_MB`` so that cutting it
        again costs no disk read."""
        held = self._pixels.get(sop_instance_uid)
        if held is None:
            held = np.load(self.cache.image_path(sop_instance_uid))
            self._pixels[sop_instance_uid] = held
            self._pixel_bytes += held.nbytes
            while self._pixel_bytes > PIXEL_MEMORY_MB * 2**20 and len(self._pixels) > 1:
                self._pixel_bytes -= self._pixels.popitem(last=False)[1].nbytes
        else:
            self._pixels.move_to_end(sop_instance_uid)
        return held

    def resized(self, sop_instance_uid: str, size: int) -> np.ndarray:
        """The cached image resized for the detector, kept in memory (float16) for every later fold."""
        key = (sop_instance_uid, size)
        if key not in self._resized:
            self._resized[key] = resize_image(self.image(sop_instance_uid), size).astype(np.float16)
        return self._resized[key]

    def patch(
        self,
        sop_instance_uid: str,
        box: tuple[float, ...],
        geometry: PatchGeometry,
        context: float,
        scale_box: tuple[float, ...] | None = None,
    ) -> np.ndarray:
        """A canal patch of the cached image, kept in memory (float32, as the ``Pipeline`` cuts it): every fold that
        cuts the same box with the same geometry (one rater's box, in 10 folds) reuses it."""
        key = (
            sop_instance_uid,
            tuple(box),
            astuple(geometry),
            context,
            None if scale_box is None else tuple(scale_box),
        )
        if key not in self._patches:
            pixel_mm = float(self.pixel_spacing[sop_instance_uid])
            self._patches[key] = geometry.crop(  # converts to float32 only the pixels the crop reads
                self._held(sop_instance_uid),
                np.asarray(box),
                context,
                pixel_mm=pixel_mm,
                scale_box=None if scale_box is None else np.asarray(scale_box),
            )
        return self._patches[key]

    @cached_property
    def pixel_spacing(self) -> pd.Series:
        """Column pixel spacing (mm) per SOPInstanceUID."""
        return self.images.set_index("sop_instance_uid")["pixel_spacing_col"]

    @property
    def images(self) -> pd.DataFrame:
        return self.index.images

    @property
    def skipped(self) -> list[SkippedFile]:
        return self.index.skipped

    def labelled_images(self) -> pd.DataFrame:
        """One row per image that any rater labelled: its patient pseudonym and fold stratum.

        The stratum is the most severe call any rater made (cord only if every rater said cord), so folds are
        the same for every rater and Classifier1 and Classifier2 are tested on the same patients.
        """
        rank = {"": -1, **active().index}
        rows = self.labels.rows
        per_image = rows.assign(_rank=rows["grade"].map(rank), _rootlet=rows["level"] == "rootlet").groupby(
            "sop_instance_uid"
        )
        summary = per_image.agg(rank=("_rank", "max"), rootlet=("_rootlet", "any")).reset_index()
        summary["stratum"] = [
            stratum("rootlet" if rl else "cord", grades()[r] if r >= 0 else "")
            for rl, r in zip(summary["rootlet"], summary["rank"], strict=True)
        ]
        patient = self.images.set_index("sop_instance_uid")["patient"]
        summary["patient"] = summary["sop_instance_uid"].map(patient)
        return summary[["sop_instance_uid", "patient", "stratum"]]

    def folds(self, num_folds: int = 10, seed: int = 0) -> StratifiedPatientFolds:
        return StratifiedPatientFolds.build(self.labelled_images(), num_folds=num_folds, seed=seed)

    def report(self) -> dict[str, Any]:
        """The ingest report (no patient identifiers: patients are counted, never named)."""
        out: dict[str, Any] = {
            "images": len(self.images),
            "patients": int(self.images["patient"].nunique()),
            "series": int(self.images["series_instance_uid"].nunique()),
            "decoded_files": self.index.decoded,
            "cached_files": self.index.from_cache,
            "skipped_files": [s.as_dict(self.root / "dicom") for s in self.skipped],
            "excluded_series": [d.as_dict() for d in self.series if not d.chosen],
            "labels": self.labels.report(),
            "grade_distribution": self.labels.grade_distribution(),
            "intersection_images": len(self.labels.intersection()),
        }
        if self.truth is not None:
            out["truth_rows"] = len(self.truth.rows)
        return out
