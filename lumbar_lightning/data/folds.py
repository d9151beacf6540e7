"""Patient-level, grade-stratified K-fold assignment with the paper's 7/2/1 rotation.

Patients, never images, go to parts; fold ``k`` tests on part ``k``, validates on parts ``k+1`` and ``k+2``
(mod K) and trains on the rest. The assignment depends on (patients, labels, K, seed) alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.io import atomic_write_text

SPLITS = ("train", "val", "test")


def stratum(level: str, grade: str) -> str:
    """The class an image is stratified by: its grade, or ``cord`` for cord-level images."""
    return grade if level == "rootlet" and grade else ("cord" if level == "cord" else "ungraded")


@dataclass(frozen=True)
class StratifiedPatientFolds:
    """Part number per patient; ``split(k)`` gives the train/val/test patients of fold ``k``."""

    parts: pd.Series  # index: patient pseudonym, value: part in [0, K)
    num_folds: int

    @classmethod
    def build(cls, images: pd.DataFrame, num_folds: int = 10, seed: int = 0) -> StratifiedPatientFolds:
        """Assign patients to parts from one row per labelled image with columns ``patient`` and ``stratum``.

        ``StratifiedGroupKFold`` keeps each patient whole while balancing the per-image stratum counts over parts.
        """
        if num_folds < 4:
            raise DataContractError(f"num_folds={num_folds}: the 7/2/1-style rotation needs at least 4 folds")
        images = images.sort_values(["patient", "sop_instance_uid"]).reset_index(drop=True)
        patients = images["patient"].unique()
        if len(patients) < num_folds:
            raise DataContractError(
                f"{len(patients)} labelled patients cannot fill {num_folds} folds: need at least one per part"
            )
        # Shuffle patients by seed first so the greedy assignment does not depend on the pseudonyms' order.
        order = np.random.default_rng(seed).permutation(len(patients))
        rank = {p: i for i, p in enumerate(patients[order])}
        images = images.assign(_rank=images["patient"].map(rank)).sort_values(["_rank", "sop_instance_uid"])
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        parts = pd.Series(-1, index=pd.Index(patients, name="patient"), name="part", dtype=int)
        for part, (_, test_idx) in enumerate(
            splitter.split(np.zeros(len(images)), images["stratum"].to_numpy(), images["_rank"].to_numpy())
        ):
            parts[images["patient"].iloc[test_idx].unique()] = part
        return cls(parts=parts.sort_index(), num_folds=num_folds)

    def parts_of(self, fold: int) -> dict[str, list[int]]:
        """Which parts fold ``fold`` trains, validates and tests on."""
        if not 0 <= fold < self.num_folds:
            raise DataContractError(f"data.fold={fold} is outside 0..{self.num_folds - 1}")
        k = self.num_folds
        test = [fold]
        val = [(fold + 1) % k, (fold + 2) % k]
        train = [p for p in range(k) if p not in test and p not in val]
        return {"train": train, "val": val, "test": test}

    def split(self, fold: int) -> dict[str, list[str]]:
        """Patients per split of fold ``fold``."""
        return {
            name: sorted(self.parts.index[self.parts.isin(parts)].tolist())
            for name, parts in self.parts_of(fold).items()
        }

    def to_csv(self, path: Path) -> None:
        atomic_write_text(Path(path), self.parts.reset_index().to_csv(index=False))

    @classmethod
    def from_csv(cls, path: Path) -> StratifiedPatientFolds:
        frame = pd.read_csv(path, dtype={"patient": str, "part": int})
        return cls(parts=frame.set_index("patient")["part"], num_folds=int(frame["part"].max()) + 1)
