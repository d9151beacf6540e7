"""The synthetic phantom: determinism, realism targets, rater behaviour, and contract compliance."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import UID, MRImageStorage

from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.phantom.cohort import PhantomCohort, PhantomConfig
from lumbar_lightning.data.phantom.latent import (
    LatentConfig,
    grade_of,
    grade_thresholds,
    read_patient,
    sample_patient,
)
from lumbar_lightning.data.phantom.render import PatientAnatomy, SliceRenderer, SliceSpec

SMALL = PhantomConfig(n_patients=6, seed=11, image_size=160, pixel_spacing_mm=1.38)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    PhantomCohort.generate(SMALL, root, workers=2)
    return root


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in {".dcm", ".csv"}
    }


def test_same_seed_same_bytes_whatever_the_worker_count(small_cohort: Path, tmp_path: Path) -> None:
    PhantomCohort.generate(SMALL, tmp_path / "again", workers=1)
    assert _digest(small_cohort) == _digest(tmp_path / "again")
    PhantomCohort.generate(replace(SMALL, seed=12), tmp_path / "other", workers=1)
    other = _digest(tmp_path / "other")
    assert other["labels.csv"] != _digest(small_cohort)["labels.csv"]


def test_every_written_file_passes_ingestion(small_cohort: Path, tmp_path: Path) -> None:
    ds = LumbarDataset.ingest(small_cohort, tmp_path / "cache")
    truth = pd.read_csv(small_cohort / "truth.csv")
    assert ds.skipped == []
    assert ds.labels.rejected == {}
    assert ds.truth is not None and ds.truth.rejected == {}
    assert len(ds.images) == len(truth)
    assert ds.images["patient"].nunique() == SMALL.n_patients
    counts = ds.images.groupby("patient").size()
    assert counts.between(15, 46).all()
    assert set(ds.labels.raters) == {"A1", "A2"}
    # Each rater skips a few images, so the intersection is smaller than either rater's set.
    n1, n2 = (len(ds.labels.for_rater(r)) for r in ("A1", "A2"))
    assert len(ds.labels.intersection()) < min(n1, n2) <= len(truth)


def test_dicom_tags_are_present_and_valid(small_cohort: Path) -> None:
    files = sorted((small_cohort / "dicom").rglob("*.dcm"))
    uids = set()
    for path in files[:: max(1, len(files) // 25)]:
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == MRImageStorage and ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
        for tag in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            assert UID(ds[tag].value).is_valid, tag
        uids.add(ds.SOPInstanceUID)
        assert ds.Modality == "MR" and ds.Manufacturer == "SIEMENS" and float(ds.MagneticFieldStrength) == 1.5
        assert ds.SeriesDescription == "t2_tse_tra"
        assert ds.PatientID.startswith("PHANTOM-11-") and str(ds.PatientName) == ""
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert len(ds.ImagePositionPatient) == 3 and int(ds.InstanceNumber) >= 1
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([1.38, 1.38])
        assert float(ds.SliceThickness) == 4.0 and float(ds.SpacingBetweenSlices) == 4.4
        assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
        assert "RescaleSlope" in ds and "RescaleIntercept" in ds
        assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.shape == (160, 160)
    assert len(uids) > 20


def test_slices_are_ordered_head_to_feet_at_the_slice_spacing(small_cohort: Path) -> None:
    truth = pd.read_csv(small_cohort / "truth.csv")
    for _, part in truth.groupby("patient_index"):
        steps = np.diff(part["slice_z_mm"].to_numpy())
        np.testing.assert_allclose(steps, -4.4, atol=1e-6)


def test_cord_only_at_or_above_the_conus(small_cohort: Path) -> None:
    truth = pd.read_csv(small_cohort / "truth.csv", keep_default_na=False)
    cord = truth[truth["level"] == "cord"]
    assert len(cord) > 0
    assert (cord["slice_z_mm"] >= cord["conus_z_mm"]).all()
    assert (cord["grade"] == "").all()
    # And in the latent model over many patients.
    cfg = LatentConfig()
    rng = np.random.default_rng(0)
    for i in range(200):
        p = sample_patient(cfg, rng, i)
        assert np.all(p.slice_z[p.is_cord()] >= p.conus_z)


def _latent_cohort(n_patients: int, seed: int) -> dict[str, np.ndarray]:
    """The exact latent calls the writer makes, without rendering (fast)."""
    cfg = PhantomConfig().latent
    thresholds = grade_thresholds(cfg)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("tg", "tc", "g1", "c1", "l1", "g2", "c2", "l2")}
    for i in range(n_patients):
        p = sample_patient(cfg, np.random.default_rng([seed, 0, i]), i)
        out["tg"].append(grade_of(p.severity, thresholds))
        out["tc"].append(p.is_cord())
        for r, rater in enumerate(cfg.raters):
            reading = read_patient(p, rater, thresholds, np.random.default_rng([seed, 3, i, r]))
            out[f"g{r + 1}"].append(reading.grade)
            out[f"c{r + 1}"].append(reading.is_cord)
            out[f"l{r + 1}"].append(reading.labelled)
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prevalence_and_rater_agreement_on_100_patients(seed: int) -> None:
    c = _latent_cohort(100, seed)
    rootlet = ~c["tc"]
    prevalence = np.bincount(c["tg"][rootlet], minlength=4) / rootlet.sum()
    # Tolerance: 100 patients are ~3500 slices, correlated within patients; 4 points on A/B, 2.5 on C/D.
    deviation = np.abs(prevalence - [0.77, 0.16, 0.05, 0.02])
    assert np.all(deviation <= [0.04, 0.04, 0.025, 0.025]), prevalence
    both = c["l1"] & c["l2"]
    graded = both & ~c["c1"] & ~c["c2"]
    agree_grade = np.mean(c["g1"][graded] == c["g2"][graded])
    agree_level = np.mean(c["c1"][both] == c["c2"][both])
    assert 0.86 <= agree_grade <= 0.92  # the study: 89.2%
    assert 0.91 <= agree_level <= 0.97  # the study: 90.3% (see the README for why ours is higher)
    for r in ("1", "2"):  # each rater agrees with the truth more than with the other rater
        assert np.mean(c[f"g{r}"][graded] == c["tg"][graded]) > agree_grade
        assert np.mean(c[f"c{r}"][both] == c["tc"][both]) > agree_level
    # Analyzer2 leans to higher grades: more B and C than Analyzer1.
    g1 = np.bincount(c["g1"][graded], minlength=4)
    g2 = np.bincount(c["g2"][graded], minlength=4)
    assert g2[1] + g2[2] > g1[1] + g1[2]
    assert np.mean(c["g2"][graded]) > np.mean(c["g1"][graded])


def test_disagreements_fall_on_borderline_cases() -> None:
    cfg = PhantomConfig().latent
    thresholds = grade_thresholds(cfg)
    rng = np.random.default_rng(5)
    dist, disagree = [], []
    for i in range(150):
        p = sample_patient(cfg, rng, i)
        r1 = read_patient(p, cfg.raters[0], thresholds, rng)
        r2 = read_patient(p, cfg.raters[1], thresholds, rng)
        dist.append(np.min(np.abs(p.severity[:, None] - thresholds[None, :]), axis=1))
        disagree.append(r1.grade != r2.grade)
    d, x = np.concatenate(dist), np.concatenate(disagree)
    # Disagreements sit much closer to a grade boundary than agreements do.
    assert np.median(d[x]) < 0.4 * np.median(d[~x])


def test_dural_sac_area_falls_from_grade_a_to_d() -> None:
    rng = np.random.default_rng(3)
    areas: dict[int, list[float]] = {g: [] for g in range(4)}
    for _ in range(160):
        anatomy = PatientAnatomy.sample(rng)
        renderer = SliceRenderer(anatomy, 128, 1.6, snr=25)
        u = rng.uniform(0.0, 4.0)
        spec = SliceSpec(int(rng.integers(1, 6)), float(rng.normal(0, 3)), 36.0, u, 0.0)
        areas[min(int(u), 3)].append(renderer.render(spec, rng).sac_area_mm2)
    means = [np.mean(areas[g]) for g in range(4)]
    assert means[0] > means[1] > means[2] > means[3]
    assert 120 < means[0] < 190  # about 150 mm^2 when normal
    assert means[3] < 75  # below 75 mm^2 when severe


def test_grades_look_different_where_schizas_says(small_cohort: Path) -> None:
    """Epidural fat vanishes only in grade D, and the sac shrinks with grade in the written truth."""
    truth = pd.read_csv(small_cohort / "truth.csv", keep_default_na=False)
    graded = truth[truth["level"] == "rootlet"]
    fat = graded.groupby("grade")["epidural_fat_mm"].mean()
    assert fat["A"] > 1.5
    if "D" in fat:
        assert fat["D"] < 0.5 * fat["A"]
    area = graded.groupby("grade")["dural_sac_area_mm2"].mean()
    assert area["A"] > area["B"]


@pytest.mark.slow
def test_default_100_patient_cohort_end_to_end(tmp_path: Path) -> None:
    cohort = PhantomCohort.generate(PhantomConfig(), tmp_path / "ph")
    ds = LumbarDataset.ingest(tmp_path / "ph")
    assert ds.skipped == [] and ds.labels.rejected == {}
    wide = ds.labels.wide(["A1", "A2"])
    both = (wide["level_A1"] == "rootlet") & (wide["level_A2"] == "rootlet")
    assert 0.86 <= np.mean(wide["grade_A1"][both] == wide["grade_A2"][both]) <= 0.92
    assert cohort.n_images == len(ds.images)
