from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.folds import StratifiedPatientFolds


def _images(n_patients: int = 60, seed: int = 1) -> pd.DataFrame:
    """Patients with 10-30 images each; mostly grade A, rare C/D concentrated in some patients."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        severe = rng.random() < 0.3
        probs = [0.6, 0.25, 0.1, 0.05] if severe else [0.85, 0.15, 0.0, 0.0]
        for i in range(int(rng.integers(10, 31))):
            s = "cord" if i < 2 else str(rng.choice(list("ABCD"), p=probs))
            rows.append({"sop_instance_uid": f"{p}.{i}", "patient": f"P{p:03d}", "stratum": s})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("k", [4, 5, 10])
def test_rotation_is_a_partition_and_every_patient_is_tested_once(k: int) -> None:
    folds = StratifiedPatientFolds.build(_images(), num_folds=k, seed=3)
    patients = set(folds.parts.index)
    tested = []
    for fold in range(k):
        split = folds.split(fold)
        train, val, test = (set(split[s]) for s in ("train", "val", "test"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == patients
        tested += split["test"]
        assert folds.parts_of(fold)["val"] == [(fold + 1) % k, (fold + 2) % k]
    assert sorted(tested) == sorted(patients)


def test_ten_folds_give_the_papers_7_2_1() -> None:
    folds = StratifiedPatientFolds.build(_images(), num_folds=10, seed=0)
    parts = folds.parts_of(4)
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (7, 2, 1)
    assert parts == {"train": [0, 1, 2, 3, 7, 8, 9], "val": [5, 6], "test": [4]}


def test_grade_proportions_per_part_stay_near_the_whole() -> None:
    images = _images(n_patients=100)
    folds = StratifiedPatientFolds.build(images, num_folds=10, seed=0)
    whole = images["stratum"].value_counts(normalize=True)
    part_of = images["patient"].map(folds.parts)
    for part in range(10):
        share = (
            images.loc[part_of == part, "stratum"]
            .value_counts(normalize=True)
            .reindex(whole.index, fill_value=0)
        )
        # Tolerance: 5 points for common classes, and no part without any grade C image.
        assert (share - whole).abs().max() < 0.05, (part, share.to_dict())
        assert share["C"] > 0


def test_deterministic_in_inputs_and_seed(tmp_path: Path) -> None:
    images = _images()
    a = StratifiedPatientFolds.build(images, 10, seed=7)
    b = StratifiedPatientFolds.build(images.sample(frac=1.0, random_state=1), 10, seed=7)
    c = StratifiedPatientFolds.build(images, 10, seed=8)
    pd.testing.assert_series_equal(a.parts, b.parts)
    assert not a.parts.equals(c.parts)
    a.to_csv(tmp_path / "folds.csv")
    back = StratifiedPatientFolds.from_csv(tmp_path / "folds.csv")
    pd.testing.assert_series_equal(back.parts, a.parts, check_dtype=False)
    assert back.num_folds == 10


def test_too_few_patients_or_folds_is_a_clear_error() -> None:
    with pytest.raises(DataContractError, match="at least 4 folds"):
        StratifiedPatientFolds.build(_images(), num_folds=3)
    with pytest.raises(DataContractError, match="5 labelled patients cannot fill 10 folds"):
        StratifiedPatientFolds.build(_images(n_patients=5), num_folds=10)
