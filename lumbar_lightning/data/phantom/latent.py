"""The phantom's hidden truth: patients, slices, a continuous stenosis severity, and two raters who read it.

Stenosis is a latent log-severity ``s`` per slice (patient degeneration x level weight x closeness to the disc).
The true grade is ``s`` binned at thresholds chosen so that the grade prevalence matches the configuration; each
rater reads ``s`` with its own bias and noise and bins it the same way, so raters disagree on borderline slices,
as real readers do. Every image sign (sac area, CSF, rootlet crowding, epidural fat) is a function of ``s``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

GRADES = ("A", "B", "C", "D")
DISC_LEVELS = ("T12/L1", "L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
#: How strongly each disc level degenerates: L4/L5 most, then L3/L4 and L5/S1, as in clinical series.
LEVEL_WEIGHT = np.log(np.array([0.30, 0.42, 0.58, 0.82, 1.0, 0.66]))
#: Normal dural sac area per level (mm^2); the sac holds the cord at the top and fewer roots at the bottom.
NORMAL_SAC_AREA = np.array([175.0, 168.0, 160.0, 155.0, 150.0, 146.0])
ROOTLET_COUNT = np.array([20, 18, 16, 14, 12, 10])
#: A slice shows a cord when the (tapering) cord radius is at least this many mm.
CORD_VISIBLE_MM = 1.5
CORD_RADIUS_MM = 4.2
CONUS_TAPER_MM = 14.0


@dataclass(frozen=True)
class RaterModel:
    """How one simulated rater reads the truth.

    ``grade_bias``/``grade_noise`` act on the latent log-severity (the thresholds are about 0.5 apart);
    ``conus_bias_mm``/``conus_noise_mm`` shift where the rater believes the conus ends (per patient);
    ``skip_rate`` is the share of images the rater leaves out as not gradable; ``box_jitter_px`` the sd of
    each box edge.
    """

    name: str
    grade_bias: float = 0.0
    grade_noise: float = 0.12
    conus_bias_mm: float = 0.0
    conus_noise_mm: float = 6.0
    skip_rate: float = 0.03
    box_jitter_px: float = 1.5


def default_raters() -> tuple[RaterModel, ...]:
    """Analyzer1 near the truth; Analyzer2 leaning to higher grades and a lower conus (calls more B and C).

    Tuned to the study's inter-rater grade agreement (89.2%): the default 100-patient cohort gives 89.4%
    (seeds 0-2: 89.6% on average; the earlier -0.06/0.11 and 0.14/0.09 gave 87.4%).
    """
    return (
        RaterModel("A1", grade_bias=-0.05, grade_noise=0.09, conus_bias_mm=-6.0, conus_noise_mm=12.0),
        RaterModel("A2", grade_bias=0.12, grade_noise=0.08, conus_bias_mm=5.0, conus_noise_mm=3.0),
    )


@dataclass(frozen=True)
class LatentConfig:
    """What shapes the hidden truth; see ``PhantomConfig`` for the imaging side."""

    prevalence: tuple[float, float, float, float] = (0.77, 0.16, 0.05, 0.02)
    slice_spacing_mm: float = 4.4
    min_slices: int = 15
    max_slices: int = 46
    patient_sd: float = 0.45
    level_sd: float = 0.32
    slice_sd: float = 0.08
    raters: tuple[RaterModel, ...] = field(default_factory=default_raters)


@dataclass
class LatentPatient:
    """One patient's hidden anatomy along the spine and per-slice truth."""

    index: int
    segment_mm: float  # disc-to-disc distance
    conus_z: float  # z of the conus tip (mm); the cord is above it
    slice_z: np.ndarray  # z of each slice, head first (DICOM +z is superior)
    level_index: np.ndarray  # nearest disc level per slice
    disc_offset: np.ndarray  # z distance to that disc (mm)
    severity: np.ndarray  # latent log-severity per slice
    level_severity: np.ndarray  # per disc level, before the slice profile

    @property
    def n_slices(self) -> int:
        return len(self.slice_z)

    def disc_z(self) -> np.ndarray:
        return -np.arange(len(DISC_LEVELS)) * self.segment_mm

    def cord_radius(self, z: np.ndarray, conus_shift_mm: float = 0.0) -> np.ndarray:
        """Cord radius (mm) at heights ``z``: full above the taper, zero below the conus tip."""
        frac = np.clip((np.asarray(z) - (self.conus_z + conus_shift_mm)) / CONUS_TAPER_MM, 0.0, 1.0)
        return CORD_RADIUS_MM * frac**0.7

    def is_cord(self, conus_shift_mm: float = 0.0) -> np.ndarray:
        return self.cord_radius(self.slice_z, conus_shift_mm) >= CORD_VISIBLE_MM


def disc_profile(offset_mm: np.ndarray, segment_mm: float) -> np.ndarray:
    """Log factor of compression away from the disc: the disc bulge and buckled ligament sit at the disc."""
    return np.log(0.12 + 0.88 * np.exp(-((np.asarray(offset_mm) / (0.2 * segment_mm)) ** 2)))


def sample_patient(cfg: LatentConfig, rng: np.random.Generator, index: int) -> LatentPatient:
    """Draw one patient's spine, coverage and severities."""
    segment = float(rng.uniform(33.0, 40.0))
    disc_z = -np.arange(len(DISC_LEVELS)) * segment
    # Coverage ends just below L5/S1; most studies start above T12/L1 (whole lumbar spine), some lower.
    bottom = disc_z[-1] - rng.uniform(4.0, 12.0)
    if rng.random() < 0.8:
        top = disc_z[0] + rng.uniform(-0.1, 0.9) * segment
    else:
        top = disc_z[int(rng.integers(1, 4))] + rng.uniform(-0.3, 0.3) * segment
    span = float(
        np.clip(
            top - bottom,
            (cfg.min_slices - 1) * cfg.slice_spacing_mm,
            (cfg.max_slices - 1) * cfg.slice_spacing_mm,
        )
    )
    n = round(span / cfg.slice_spacing_mm) + 1
    slice_z = bottom + cfg.slice_spacing_mm * np.arange(n)[::-1] + rng.normal(0.0, 0.3)
    level_index = np.abs(slice_z[:, None] - disc_z[None, :]).argmin(axis=1)
    disc_offset = slice_z - disc_z[level_index]
    patient_factor = rng.normal(0.0, cfg.patient_sd)
    level_severity = patient_factor + LEVEL_WEIGHT + rng.normal(0.0, cfg.level_sd, size=len(DISC_LEVELS))
    severity = (
        level_severity[level_index]
        + disc_profile(disc_offset, segment)
        + rng.normal(0.0, cfg.slice_sd, size=n)
    )
    conus_z = float(disc_z[0] - segment * np.clip(rng.normal(0.8, 0.3), 0.0, 1.6))
    return LatentPatient(index, segment, conus_z, slice_z, level_index, disc_offset, severity, level_severity)


@functools.lru_cache(maxsize=8)
def grade_thresholds(cfg: LatentConfig, n_patients: int = 4000) -> np.ndarray:
    """Log-severity cut points A|B, B|C, C|D that give ``cfg.prevalence`` among rootlet-level slices.

    Computed once from a large fixed-seed latent cohort, so they depend on the configuration alone.
    """
    prevalence = np.asarray(cfg.prevalence, dtype=float)
    if prevalence.shape != (4,) or np.any(prevalence <= 0):
        raise ValueError(f"prevalence must be four positive shares for A-D, got {cfg.prevalence}")
    prevalence = prevalence / prevalence.sum()
    rng = np.random.default_rng(20240601)
    values = []
    for i in range(n_patients):
        p = sample_patient(cfg, rng, i)
        values.append(p.severity[~p.is_cord()])
    return np.quantile(np.concatenate(values), np.cumsum(prevalence)[:3])


def grade_of(severity: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Grade index 0..3 (A..D) of each log-severity."""
    return np.searchsorted(thresholds, np.asarray(severity), side="right")


def severity_units(severity: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Map log-severity to units where the grade boundaries sit at 1, 2 and 3 (0 = healthy, 4 = extreme).

    The image signs are written in these units, so their meaning does not change when the prevalence does.
    """
    t1, t2, t3 = thresholds
    knots = [t1 - 2.0 * (t2 - t1), t1, t2, t3, t3 + (t3 - t2)]
    return np.interp(severity, knots, [0.0, 1.0, 2.0, 3.0, 4.0])


@dataclass
class RaterReading:
    """One rater's calls on one patient's slices."""

    name: str
    is_cord: np.ndarray
    grade: np.ndarray  # 0..3, meaningful where not cord
    labelled: np.ndarray  # False where the rater skipped the image as not gradable
    box_jitter: np.ndarray  # (n, 4) pixel offsets for x_min, y_min, x_max, y_max


def read_patient(
    patient: LatentPatient, rater: RaterModel, thresholds: np.ndarray, rng: np.random.Generator
) -> RaterReading:
    """How ``rater`` labels ``patient``: its own conus call, noisy severity reads, skips and box jitter."""
    n = patient.n_slices
    conus_shift = rater.conus_bias_mm + rng.normal(0.0, rater.conus_noise_mm)
    is_cord = patient.is_cord(conus_shift)
    observed = patient.severity + rater.grade_bias + rng.normal(0.0, rater.grade_noise, size=n)
    return RaterReading(
        name=rater.name,
        is_cord=is_cord,
        grade=grade_of(observed, thresholds),
        labelled=rng.random(n) >= rater.skip_rate,
        box_jitter=rng.normal(0.0, rater.box_jitter_px, size=(n, 4)),
    )
