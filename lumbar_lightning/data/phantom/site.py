"""``SiteCohort``: a second phantom family whose presets differ the way hospitals differ.

Written from the anatomy and the study (Schizas: A CSF visible and rootlets separate, B rootlets fill the sac
but stay separable, C no rootlets or CSF recognisable with posterior epidural fat, D as C without fat), not from
the default phantom's code, so that a setting tuned on one family is tested on an honestly different one:

- the hidden truth is a narrowing fraction of the canal per slice (a raised-cosine profile around each disc),
  not a log-severity; the conus tapers linearly;
- the canal outline is a Fourier series (oval, trefoil low in the spine), squeezed by disc and ligament sectors;
- structures are painted as hard masks on a 4x supersampled window and averaged (partial volume), and the
  scanner blurs by truncating k-space (Gibbs ringing), adds complex noise scaled by a parallel-imaging g-factor
  map, a posterior coil falloff and 3 T central brightening;
- headers are another vendor's: signed or rescaled pixels, optional RLE compression, gantry tilt, files without
  an extension, instance numbers counted from the feet;
- each site's readers have their own boundary habits, per-study moods, lapses, box margins and skip rules.

Every random stream is keyed by (seed, purpose, patient, slice), so the same seed gives the same bytes whatever
the number of worker processes.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, RLELossless
from scipy.ndimage import zoom

from lumbar_lightning.data.dicom.writer import deterministic_uid
from lumbar_lightning.data.phantom.cohort import LABEL_FIELDS, write_patients
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.numerics import numpy_numerics

GRADES = ("A", "B", "C", "D")
DISCS = ("T12/L1", "L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
#: How prone each disc level is to narrow (logit offset): L4/L5 most, then L3/L4 and L5/S1.
LEVEL_PRONENESS = np.array([-2.2, -1.7, -1.0, -0.2, 0.45, -0.45])
#: Normal dural sac area (mm^2) and visible nerve roots per disc level.
SAC_AREA = np.array([170.0, 165.0, 158.0, 152.0, 148.0, 140.0])
ROOTS = np.array([22, 20, 17, 14, 12, 9])
CORD_FULL_MM, CORD_SEEN_MM, CORD_TAPER_MM = 4.0, 1.2, 12.0
SITE_TRUTH_FIELDS = [
    *LABEL_FIELDS[1:],
    "narrowing",
    "grade_units",
    "sac_area_mm2",
    "fat_mm",
    "slice_z_mm",
    "conus_z_mm",
    "patient_index",
]


@dataclass(frozen=True)
class Scanner:
    """What the site's scanner and protocol change in the image and in its headers."""

    manufacturer: str = "GE MEDICAL SYSTEMS"
    model: str = "Signa HDxt"
    field_strength_t: float = 1.5
    matrix: int = 256
    fov_mm: float = 200.0
    slice_thickness_mm: float = 5.0
    slice_gap_mm: float = 1.0
    echo_time_ms: float = 102.0
    repetition_time_ms: float = 3500.0
    noise: float = 0.05  # complex noise sd relative to CSF
    g_factor: float = 1.0  # parallel-imaging noise amplification at the centre of the field
    coil_falloff: float = 0.6  # signal loss from the posterior (spine) coil towards the front
    dielectric: float = 0.0  # 3 T central brightening
    kspace_fraction: float = 0.8  # share of k-space acquired in each direction (less: blurrier, ringing)
    fat: float = 0.85  # T2 signal relative to CSF
    muscle: float = 0.24
    rescale_slope: float = 1.0
    signed: bool = True
    rle: bool = False
    tilt_sd_deg: float = 0.0  # gantry tilt about the left-right axis, per series
    series_description: str = "AX T2 FSE"


@dataclass(frozen=True)
class Reader:
    """How one of the site's readers grades, places the conus, draws boxes and skips images."""

    name: str
    boundary_shift: tuple[float, float, float] = (
        0.0,
        0.0,
        0.0,
    )  # grade units; + holds the lower grade longer
    noise: float = 0.2  # sd of one read, grade units
    study_noise: float = 0.1  # a per-study offset of this reader
    lapse: float = 0.01  # share of reads one grade off at random
    conus_bias_mm: float = 0.0
    conus_sd_mm: float = 4.0
    box_margin_mm: float = 1.0  # beyond the bony canal; loose readers draw wide boxes
    box_sd_mm: float = 0.8
    skip_rate: float = 0.02
    skip_severe: float = 0.0  # extra share of C/D images skipped as hard to read


def _reader(values: Any) -> Reader:
    if isinstance(values, Reader):
        return values
    values = dict(values)
    values["boundary_shift"] = tuple(float(v) for v in values.get("boundary_shift", (0.0, 0.0, 0.0)))
    return Reader(**values)


@dataclass(frozen=True)
class SiteConfig:
    """One site: who its patients are, its scanner, and its readers."""

    name: str = "site_b"
    n_patients: int = 48
    seed: int = 0
    prevalence: tuple[float, float, float, float] = (0.70, 0.18, 0.08, 0.04)
    patient_sd: float = 1.0  # spread of degeneration between patients (logit units)
    level_sd: float = 0.6
    canal_size_sd: float = 0.12  # developmental canal size
    fat_mm: tuple[float, float] = (1.5, 4.0)
    rotation_sd_deg: float = 6.0
    shift_sd_mm: float = 6.0
    partial_coverage: float = 0.25  # share of studies that start below T12/L1
    scanner: Scanner = field(default_factory=Scanner)
    readers: tuple[Reader, ...] = (Reader("A1"), Reader("A2"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SiteConfig:
        values = dict(values)
        values.pop("family", None)
        scanner = Scanner(**dict(values.pop("scanner", None) or {}))
        readers = tuple(_reader(r) for r in values.pop("readers", None) or cls.readers)
        for key in ("prevalence", "fat_mm"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values, scanner=scanner, readers=readers)

    @property
    def pixel_mm(self) -> float:
        return self.scanner.fov_mm / self.scanner.matrix

    @property
    def spacing_mm(self) -> float:
        return self.scanner.slice_thickness_mm + self.scanner.slice_gap_mm


# -- the hidden truth ---------------------------------------------------------------------------------------------
@dataclass
class SitePatient:
    index: int
    segment_mm: float
    conus_z: float
    slice_z: np.ndarray  # head first
    disc: np.ndarray  # nearest disc level per slice
    offset: np.ndarray  # mm from that disc
    narrowing: np.ndarray  # share of the canal lost per slice, 0..1

    def cord_radius(self, shift_mm: float = 0.0) -> np.ndarray:
        return CORD_FULL_MM * np.clip((self.slice_z - self.conus_z - shift_mm) / CORD_TAPER_MM, 0.0, 1.0)

    def is_cord(self, shift_mm: float = 0.0) -> np.ndarray:
        return self.cord_radius(shift_mm) >= CORD_SEEN_MM


def draw_patient(cfg: SiteConfig, index: int, seed: int | None = None) -> SitePatient:
    """One patient's coverage and per-slice narrowing (seed defaults to the cohort's)."""
    rng = np.random.default_rng([cfg.seed if seed is None else seed, 10, index])
    segment = float(rng.normal(36.0, 2.5))
    discs = -segment * np.arange(len(DISCS))
    bottom = discs[-1] - rng.uniform(3.0, 10.0)
    top_disc = int(rng.integers(1, 3)) if rng.random() < cfg.partial_coverage else 0
    top = discs[top_disc] + rng.uniform(0.2, 0.8) * segment
    n = int(np.floor((top - bottom) / cfg.spacing_mm)) + 1
    slice_z = bottom + cfg.spacing_mm * np.arange(n)[::-1]
    disc = np.abs(slice_z[:, None] - discs[None, :]).argmin(axis=1)
    offset = slice_z - discs[disc]
    level_logit = (
        rng.normal(0.0, cfg.patient_sd) + LEVEL_PRONENESS + rng.normal(0.0, cfg.level_sd, len(DISCS))
    )
    peak = 1.0 / (1.0 + np.exp(-level_logit))
    near = np.clip(np.abs(offset) / (0.45 * segment), 0.0, 1.0)
    profile = 0.5 * (1.0 + np.cos(np.pi * near))
    narrowing = np.clip(peak[disc] * profile**1.3 + rng.normal(0.0, 0.015, n), 0.0, 0.98)
    conus = float(discs[0] - segment * np.clip(rng.normal(0.9, 0.35), 0.1, 1.8))
    return SitePatient(index, segment, conus, slice_z, disc, offset, narrowing)


@functools.lru_cache(maxsize=16)
def grade_cuts(cfg: SiteConfig, n: int = 3000) -> np.ndarray:
    """Narrowing cut points A|B, B|C, C|D giving the site's prevalence among rootlet-level slices."""
    prevalence = np.asarray(cfg.prevalence, dtype=float)
    if prevalence.shape != (4,) or np.any(prevalence <= 0):
        raise ValueError(f"prevalence must be four positive shares for A-D, got {cfg.prevalence}")
    values = [p.narrowing[~p.is_cord()] for p in (draw_patient(cfg, i, seed=99_991) for i in range(n))]
    return np.quantile(np.concatenate(values), np.cumsum(prevalence / prevalence.sum())[:3])


#: The grade boundaries in grade units: A below 1, B below 2, C below 3, D above.
GRADE_BOUNDS = np.array([1.0, 2.0, 3.0])


def grade_index(units: np.ndarray | float, shift: np.ndarray | float = 0.0) -> np.ndarray:
    """Grade 0..3 (A..D) of values in grade units; ``shift`` moves the boundaries (a reader's habits)."""
    return np.searchsorted(GRADE_BOUNDS + np.asarray(shift), units, side="right")


def grade_units(narrowing: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Narrowing in units where the grade boundaries sit at 1, 2, 3: the image signs are written in them."""
    c1, c2, c3 = cuts
    return np.interp(narrowing, [0.0, c1, c2, c3, max(c3 + 1e-3, 0.98)], [0.0, 1.0, 2.0, 3.0, 4.0])


@dataclass
class Reading:
    is_cord: np.ndarray
    grade: np.ndarray
    labelled: np.ndarray
    margin_mm: np.ndarray  # (n, 4) box edges beyond the canal


def read(cfg: SiteConfig, patient: SitePatient, units: np.ndarray, r: int) -> Reading:
    """Reader ``r``'s calls on one patient."""
    reader = cfg.readers[r]
    rng = np.random.default_rng([cfg.seed, 20, patient.index, r])
    n = len(units)
    is_cord = patient.is_cord(reader.conus_bias_mm + rng.normal(0.0, reader.conus_sd_mm))
    seen = units + rng.normal(0.0, reader.study_noise) + rng.normal(0.0, reader.noise, n)
    grade = grade_index(seen, reader.boundary_shift)
    lapse = rng.random(n) < reader.lapse
    grade = np.where(lapse, np.clip(grade + rng.choice([-1, 1], n), 0, 3), grade)
    true = grade_index(units)
    skip = rng.random(n) < reader.skip_rate + reader.skip_severe * (true >= 2)
    margin = reader.box_margin_mm + rng.normal(0.0, reader.box_sd_mm, (n, 4))
    return Reading(is_cord, grade, ~skip, margin)


def reader_agreement(cfg: SiteConfig, n_patients: int | None = None) -> float:
    """Share of images both readers grade (rootlet level for both) with the same grade: the calibration target."""
    cuts = grade_cuts(cfg)
    same = total = 0
    for i in range(n_patients or cfg.n_patients):
        p = draw_patient(cfg, i)
        units = grade_units(p.narrowing, cuts)
        a, b = (read(cfg, p, units, r) for r in (0, 1))
        both = a.labelled & b.labelled & ~a.is_cord & ~b.is_cord
        same += int(np.sum(a.grade[both] == b.grade[both]))
        total += int(both.sum())
    return same / max(total, 1)


# -- the image ----------------------------------------------------------------------------------------------------
@dataclass
class Body:
    """Per-patient shape, pose and tissue texture."""

    half_width: float
    half_depth: float
    subcut_mm: float
    canal_scale: float
    aspect: float
    fat_mm: float
    rotation: float
    shift: np.ndarray
    gain: float
    disc_signal: np.ndarray
    texture_seed: int

    @classmethod
    def draw(cls, cfg: SiteConfig, index: int) -> Body:
        rng = np.random.default_rng([cfg.seed, 30, index])
        return cls(
            half_width=rng.uniform(130.0, 175.0),
            half_depth=rng.uniform(100.0, 135.0),
            subcut_mm=rng.uniform(6.0, 35.0),
            canal_scale=float(np.clip(rng.normal(1.0, cfg.canal_size_sd), 0.7, 1.35)),
            aspect=rng.uniform(1.2, 1.7),
            fat_mm=rng.uniform(*cfg.fat_mm),
            rotation=np.deg2rad(rng.normal(0.0, cfg.rotation_sd_deg)),
            shift=rng.normal([0.0, 18.0], cfg.shift_sd_mm),
            gain=rng.uniform(700.0, 2600.0),
            disc_signal=rng.uniform(0.15, 0.7, len(DISCS)),
            texture_seed=int(rng.integers(1 << 30)),
        )


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0


class SiteRenderer:
    """Paints one patient's slices on the site's grid; the canal window is supersampled 4x."""

    SUPER = 4
    WINDOW_MM = 52.0

    def __init__(self, cfg: SiteConfig, body: Body) -> None:
        self.cfg, self.body = cfg, body
        m, px = cfg.scanner.matrix, cfg.pixel_mm
        centre = (m - 1) / 2.0
        cols, rows = np.meshgrid(np.arange(m, dtype=np.float32), np.arange(m, dtype=np.float32))
        self.x, self.y = self._to_body((cols - centre) * px, (rows - centre) * px)
        # The canal window, in pixel units of the full grid, then its supersampled coordinates.
        half = int(np.ceil(self.WINDOW_MM / 2 / px))
        cc, cr = self._to_pixels(0.0, 0.0)
        self.r0, self.c0 = (
            int(np.clip(round(cr) - half, 0, m - 2 * half)),
            int(np.clip(round(cc) - half, 0, m - 2 * half)),
        )
        self.win = 2 * half
        s = self.SUPER
        sub = (np.arange(self.win * s, dtype=np.float32) + 0.5) / s - 0.5
        wc, wr = np.meshgrid(self.c0 + sub, self.r0 + sub)
        self.wx, self.wy = self._to_body((wc - centre) * px, (wr - centre) * px)
        trng = np.random.default_rng(body.texture_seed)
        self.texture = zoom(trng.normal(size=(m // 8 + 2, m // 8 + 2)), 8, order=3)[:m, :m].astype(np.float32)
        u = (rows - centre) / m  # + posterior
        r2 = ((cols - centre) ** 2 + (rows - centre) ** 2) / m**2
        sc = cfg.scanner
        self.coil = np.exp(-sc.coil_falloff * (0.5 - u)) * (1.0 + sc.dielectric * np.exp(-r2 / 0.05))
        self.gmap = 1.0 + (sc.g_factor - 1.0) * np.exp(-r2 / 0.08)

    def _to_body(self, xi: np.ndarray, yi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = self.body
        xi, yi = xi - b.shift[0], yi - b.shift[1]
        c, s = np.cos(b.rotation), np.sin(b.rotation)
        return (c * xi + s * yi).astype(np.float32), (-s * xi + c * yi).astype(np.float32)

    def _to_pixels(self, x: float, y: float) -> tuple[float, float]:
        b = self.body
        c, s = np.cos(b.rotation), np.sin(b.rotation)
        xi, yi = c * x - s * y + b.shift[0], s * x + c * y + b.shift[1]
        centre = (self.cfg.scanner.matrix - 1) / 2.0
        return xi / self.cfg.pixel_mm + centre, yi / self.cfg.pixel_mm + centre

    def sac_radius(self, theta: np.ndarray, level: int, narrowing: float) -> np.ndarray:
        """Dural sac outline: a Fourier oval with a trefoil at the lower levels, squeezed from the front by the
        disc and from behind-and-beside by the ligamenta flava."""
        b = self.body
        trefoil = 0.05 + 0.035 * level
        shape = 1.0 + 0.5 * (b.aspect - 1.0) * np.cos(2 * theta) + trefoil * np.cos(3 * theta - np.pi / 2)
        front = np.clip(-np.sin(theta), 0, None) ** 3  # anterior is -y
        back = np.exp(-(((np.abs(theta) - np.deg2rad(55)) / 0.45) ** 2)) * (theta > 0)
        squeeze = 1.0 - narrowing * (0.55 * front + 0.45 * back + 0.25)
        r = shape * np.clip(squeeze, 0.12, 1.0)
        # Scale so that the unsqueezed sac has the level's normal area.
        grid = np.linspace(-np.pi, np.pi, 361)
        full = 1.0 + 0.5 * (b.aspect - 1.0) * np.cos(2 * grid) + trefoil * np.cos(3 * grid - np.pi / 2)
        k = np.sqrt(SAC_AREA[level] * b.canal_scale**2 / (0.5 * np.trapezoid(full**2, grid)))
        return k * r

    def render(
        self,
        level: int,
        offset_mm: float,
        segment_mm: float,
        narrowing: float,
        units: float,
        cord_r: float,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, tuple[float, float, float, float], float, float]:
        """(image before gain, canal box in pixels as x0, y0, x1, y1, sac area mm^2, posterior fat mm)."""
        cfg, b, sc = self.cfg, self.body, self.cfg.scanner
        at_disc = abs(offset_mm) < 0.16 * segment_mm
        fat = b.fat_mm * float(np.clip((3.1 - units) / 0.5, 0.0, 1.0)) * (1.0 - 0.15 * min(units, 2.0))
        img = np.zeros_like(self.x)
        x, y = self.x, self.y
        img[_ellipse(x, y, 0, -30, b.half_width, b.half_depth)] = sc.fat
        inner = _ellipse(x, y, 0, -30, b.half_width - b.subcut_mm, b.half_depth - 0.8 * b.subcut_mm)
        img[inner] = (0.3 + 0.05 * self.texture)[inner]
        vb_w, vb_d = 22.0 + 1.2 * level, 16.0 + 0.4 * level
        front_wall = float(self.sac_radius(np.array([-np.pi / 2]), level, narrowing)[0]) + 1.0
        vb_cy = -(front_wall + vb_d)
        for side in (-1.0, 1.0):
            ps = 7.0 + 3.2 * level
            img[_ellipse(x, y, side * (vb_w + 0.6 * ps), vb_cy + 3, ps, 0.8 * ps)] = sc.muscle + 0.02
            mus = _ellipse(x, y, side * 27.0, 30.0, 24.0, 27.0)
            img[mus] = (sc.muscle + 0.03 * self.texture)[mus]
        if at_disc:
            img[_ellipse(x, y, 0, vb_cy, vb_w + 1.5, vb_d)] = 0.16
            img[_ellipse(x, y, 0, vb_cy - 1.5, 0.55 * vb_w, 0.5 * vb_d)] = b.disc_signal[level]
        else:
            img[_ellipse(x, y, 0, vb_cy, vb_w, vb_d)] = 0.05
            img[_ellipse(x, y, 0, vb_cy, vb_w - 1.6, vb_d - 1.6)] = 0.45 + 0.04 * level
        img[_ellipse(x, y, 0, 34.0, 3.2, 15.0)] = 0.05  # spinous process

        # The canal window, supersampled: bone ring, ligament, fat, sac, contents.
        wx, wy = self.wx, self.wy
        theta, rho = np.arctan2(wy, wx), np.hypot(wx, wy)
        r_sac = self.sac_radius(theta, level, narrowing)
        post = np.clip(np.sin(theta), 0, None) ** 2
        r_fat = r_sac + 0.5 + fat * post
        lig = (2.0 + 3.5 * narrowing * (abs(offset_mm) < 0.3 * segment_mm)) * (post + 0.3)
        r_lig = r_fat + lig
        sub = np.repeat(
            np.repeat(img[self.r0 : self.r0 + self.win, self.c0 : self.c0 + self.win], 4, 0), 4, 1
        )
        sub[rho <= r_lig + 4.0 + 2.5 * post] = 0.05
        if abs(offset_mm) < 0.3 * segment_mm:  # facet joints beside the canal near the disc
            side_r = float(self.sac_radius(np.array([0.0]), level, narrowing)[0])
            for side in (-1.0, 1.0):
                fx = side * (side_r + 6.0)
                sub[_ellipse(wx, wy, fx, 4.0, 5.0, 6.5)] = 0.4
                sub[_ellipse(wx, wy, fx, 4.0, 0.5, 5.5)] = 0.6
        sub[rho <= r_lig] = 0.13
        sub[rho <= r_fat] = sc.fat
        sac = rho <= r_sac
        sub[sac] = 1.0
        self._contents(sub, wx, wy, sac, level, narrowing, units, cord_r, rng)
        s = self.SUPER
        img[self.r0 : self.r0 + self.win, self.c0 : self.c0 + self.win] = sub.reshape(
            self.win, s, self.win, s
        ).mean(axis=(1, 3))
        canal = rho <= r_fat + 0.5
        rows, cols = np.nonzero(canal)
        box = (
            self.c0 + cols.min() / s - 0.5,
            self.r0 + rows.min() / s - 0.5,
            self.c0 + (cols.max() + 1) / s - 0.5,
            self.r0 + (rows.max() + 1) / s - 0.5,
        )
        area = float(sac.sum()) * (cfg.pixel_mm / s) ** 2
        return self._acquire(img, rng), box, area, fat

    def _contents(
        self,
        sub: np.ndarray,
        wx: np.ndarray,
        wy: np.ndarray,
        sac: np.ndarray,
        level: int,
        narrowing: float,
        units: float,
        cord_r: float,
        rng: np.random.Generator,
    ) -> None:
        """Cord, or roots: layered dorsally in CSF (A), filling the sac (B), merged into grey (C, D)."""
        if cord_r > 0.3:
            sub[_ellipse(wx, wy, 0.0, -0.8, 1.25 * cord_r, 0.9 * cord_r) & sac] = 0.36
        n = round(float(ROOTS[level]) * (1.0 - float(np.clip(cord_r / CORD_SEEN_MM - 0.5, 0.0, 1.0))))
        spread = float(np.clip((units - 0.4) / 1.1, 0.0, 1.0))
        for _ in range(n):
            if rng.random() > spread:  # settled in the dependent (posterior) sac
                ang, frac = rng.normal(np.pi / 2, 0.5), rng.uniform(0.5, 0.85)
            else:
                ang, frac = rng.uniform(-np.pi, np.pi), np.sqrt(rng.uniform(0.02, 0.7))
            reach = float(self.sac_radius(np.array([ang]), level, narrowing)[0]) * frac
            rr = rng.uniform(0.6, 0.95) * (1.0 + 0.25 * spread)
            sub[_ellipse(wx, wy, reach * np.cos(ang), reach * np.sin(ang), rr, rr) & sac] = 0.26
        merge = float(np.clip((units - 1.7) / 0.6, 0.0, 1.0))
        if merge > 0:
            grey = 0.4 + 0.03 * rng.normal(size=sub.shape).astype(np.float32)
            sub[sac] = (1.0 - merge) * sub[sac] + merge * grey[sac]

    def _acquire(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """k-space truncation, coil and dielectric shading, complex noise amplified by the g-factor map."""
        sc = self.cfg.scanner
        m = img.shape[0]
        k = np.fft.fftshift(np.fft.fft2(img * self.coil))
        keep = round(m * sc.kspace_fraction / 2)
        mask = np.zeros(m, dtype=bool)
        mask[m // 2 - keep : m // 2 + keep] = True
        readout = np.hamming(2 * keep)
        window = np.zeros(m)
        window[mask] = readout
        k = k * mask[:, None] * window[None, :]  # phase encoding (rows) cut hard: ringing along y
        out = np.fft.ifft2(np.fft.ifftshift(k))
        sigma = sc.noise * self.gmap
        out = out + sigma * (rng.normal(size=out.shape) + 1j * rng.normal(size=out.shape))
        return np.abs(out).astype(np.float32)


# -- writing ------------------------------------------------------------------------------------------------------
def _write_slice(
    path: Path,
    cfg: SiteConfig,
    pid: str,
    index: int,
    j: int,
    n: int,
    pixels: np.ndarray,
    z: float,
    tilt: float,
    uid: str,
) -> None:
    """One slice with the site's vendor headers."""
    sc = cfg.scanner
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, uid, "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.Manufacturer, ds.ManufacturerModelName = sc.manufacturer, sc.model
    ds.MagneticFieldStrength = sc.field_strength_t
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "SK\\OSP", "2D"
    ds.EchoTime, ds.RepetitionTime = sc.echo_time_ms, sc.repetition_time_ms
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = pid, "", "", ""
    ds.StudyInstanceUID = deterministic_uid(cfg.name, cfg.seed, "study", index)
    ds.SeriesInstanceUID = deterministic_uid(cfg.name, cfg.seed, "series", index)
    ds.FrameOfReferenceUID = deterministic_uid(cfg.name, cfg.seed, "for", index)
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.StudyID, ds.SeriesNumber, ds.SeriesDescription = "1", 5, sc.series_description
    ds.PatientPosition, ds.PositionReferenceIndicator = "HFS", ""
    ds.InstanceNumber = n - j  # counted from the feet
    row, col = (1.0, 0.0, 0.0), (0.0, float(np.cos(tilt)), float(np.sin(tilt)))
    normal = np.cross(row, col)
    half = (sc.matrix / 2.0) * cfg.pixel_mm
    pos = -half * np.array(row) - half * np.array(col) + z / normal[2] * normal
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
    ds.ImagePositionPatient = [f"{v:.3f}" for v in pos]
    ds.PixelSpacing = [f"{cfg.pixel_mm:.6f}"] * 2
    ds.SliceThickness, ds.SpacingBetweenSlices = sc.slice_thickness_mm, cfg.spacing_mm
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, (16 if sc.signed else 12), (15 if sc.signed else 11)
    ds.PixelRepresentation = 1 if sc.signed else 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{sc.rescale_slope:g}", "0", "US"
    limit = 32767 if sc.signed else 4095
    stored = np.clip(np.rint(pixels / sc.rescale_slope), 0, limit).astype(
        np.int16 if sc.signed else np.uint16
    )
    ds.PixelData = stored.tobytes()
    if sc.rle:
        ds.compress(RLELossless, stored, generate_instance_uid=False)  # keep the labelled UID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _site_patient(cfg: SiteConfig, index: int, out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Render, write and label one patient (runs in a worker process)."""
    cuts = grade_cuts(cfg)
    p = draw_patient(cfg, index)
    units = grade_units(p.narrowing, cuts)
    cord_r = p.cord_radius()
    body = Body.draw(cfg, index)
    renderer = SiteRenderer(cfg, body)
    tilt = np.deg2rad(np.random.default_rng([cfg.seed, 40, index]).normal(0.0, cfg.scanner.tilt_sd_deg))
    pid = f"{cfg.name.upper()}-{cfg.seed}-{index:04d}"
    truth, boxes, uids = [], [], []
    n = len(p.slice_z)
    for j in range(n):
        image, box, area, fat = renderer.render(
            int(p.disc[j]),
            float(p.offset[j]),
            p.segment_mm,
            float(p.narrowing[j]),
            float(units[j]),
            float(cord_r[j]),
            np.random.default_rng([cfg.seed, 50, index, j]),
        )
        uid = deterministic_uid(cfg.name, cfg.seed, "sop", index, j)
        _write_slice(
            out_dir / "dicom" / pid / f"{n - j:05d}",
            cfg,
            pid,
            index,
            j,
            n,
            image * body.gain,
            float(p.slice_z[j]),
            tilt,
            uid,
        )
        cord = bool(cord_r[j] >= CORD_SEEN_MM)
        grade = int(grade_index(units[j]))
        truth.append(
            {
                "sop_instance_uid": uid,
                **dict(zip(("x_min", "y_min", "x_max", "y_max"), (round(v, 2) for v in box), strict=True)),
                "level": "cord" if cord else "rootlet",
                "grade": "" if cord else GRADES[grade],
                "vertebral_level": DISCS[p.disc[j]],
                "narrowing": round(float(p.narrowing[j]), 5),
                "grade_units": round(float(units[j]), 4),
                "sac_area_mm2": round(area, 2),
                "fat_mm": round(fat, 3),
                "slice_z_mm": round(float(p.slice_z[j]), 3),
                "conus_z_mm": round(p.conus_z, 3),
                "patient_index": index,
            }
        )
        boxes.append(box)
        uids.append(uid)
    labels = []
    m = cfg.scanner.matrix
    for r, reader in enumerate(cfg.readers):
        reading = read(cfg, p, units, r)
        for j in np.flatnonzero(reading.labelled):
            grow = reading.margin_mm[j] / cfg.pixel_mm * np.array([-1, -1, 1, 1])
            x0, y0, x1, y1 = (float(np.clip(v, 0, m)) for v in np.asarray(boxes[j]) + grow)
            x1, y1 = max(x1, x0 + 2), max(y1, y0 + 2)
            cord = bool(reading.is_cord[j])
            labels.append(
                {
                    "analyzer": reader.name,
                    "sop_instance_uid": uids[j],
                    "x_min": round(x0, 2),
                    "y_min": round(y0, 2),
                    "x_max": round(min(x1, m), 2),
                    "y_max": round(min(y1, m), 2),
                    "level": "cord" if cord else "rootlet",
                    "grade": "" if cord else GRADES[reading.grade[j]],
                    "vertebral_level": DISCS[p.disc[j]],
                }
            )
    return {"truth": truth, "labels": labels}


@dataclass
class SiteCohort:
    """A generated site cohort on disk."""

    root: Path
    config: SiteConfig
    n_images: int
    seconds: float

    @classmethod
    def generate(cls, cfg: SiteConfig, out_dir: Path | str, workers: int | None = None) -> SiteCohort:
        out_dir = Path(out_dir)
        start = time.perf_counter()
        grade_cuts(cfg)
        n_images = write_patients(_site_patient, cfg, out_dir, SITE_TRUTH_FIELDS, workers)
        cohort = cls(out_dir, cfg, n_images, time.perf_counter() - start)
        atomic_write_text(out_dir / "phantom.json", json.dumps(cohort.manifest(), indent=2))
        return cohort

    def manifest(self) -> dict[str, Any]:
        return {
            "generator": "lumbar_lightning.data.phantom.site",
            "config": self.config.to_dict(),
            "images": self.n_images,
            "seconds": round(self.seconds, 2),
            "grade_cuts": [float(c) for c in grade_cuts(self.config)],
            "numerics": numpy_numerics(),
        }
