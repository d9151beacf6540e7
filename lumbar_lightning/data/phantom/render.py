"""Draw one axial T2 slice of the lumbar spine from a patient's anatomy and the slice's latent severity.

Coordinates are millimetres in the patient's anatomical frame centred on the spinal canal: x to the patient's
left, y posterior (so anterior is up in the image, as radiologists view axial slices). Canal structures are
polar functions of the angle around the canal centre, so compression (disc bulge anteriorly, ligamentum flavum
posterolaterally, facets laterally) and the dural sac inside stay geometrically consistent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from lumbar_lightning.data.phantom.latent import (
    CORD_VISIBLE_MM,
    NORMAL_SAC_AREA,
    ROOTLET_COUNT,
)

# T2 TSE signal, relative to CSF.
CSF, FAT, MUSCLE, PSOAS, MARROW, CORTEX = 1.0, 0.82, 0.22, 0.25, 0.42, 0.06
ANNULUS, NUCLEUS, LIGAMENT, CORD, ROOTLET, CLUMPED, BOWEL = 0.19, 0.68, 0.14, 0.34, 0.27, 0.40, 0.33


def angular_window(theta: np.ndarray, centre_deg: float, power: int) -> np.ndarray:
    """A smooth lobe of directions around ``centre_deg`` (90 = posterior, -90 = anterior)."""
    return np.clip(np.cos(theta - np.deg2rad(centre_deg)), 0, None) ** power


def smoothstep(edge0: float, edge1: float, x: np.ndarray | float) -> np.ndarray:
    t = np.clip((np.asarray(x, dtype=float) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class PatientAnatomy:
    """The per-patient shape parameters that stay fixed across that patient's slices."""

    body_a: float  # body half-width (mm)
    body_b: float  # body half-depth
    body_cy: float  # body centre, y (mm, relative to the canal)
    subcut_fat: float
    canal_scale: float  # scales the normal sac area
    canal_aspect: float  # width / depth of the sac
    vb_a: float
    vb_b: float
    muscle_scale: float
    fat_thickness: float  # posterior epidural fat when healthy (mm)
    lf_scale: float
    compression_mix: np.ndarray  # shares of disc / ligamentum / facet compression
    rotation_deg: float
    shift_mm: np.ndarray  # canal centre in the image, relative to the image centre
    gain: float
    gamma: float
    bias_coeffs: np.ndarray
    disc_health: np.ndarray  # per level, 0 (black disc) .. 1 (bright nucleus)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PatientAnatomy:
        return cls(
            body_a=rng.uniform(125, 165),
            body_b=rng.uniform(95, 125),
            body_cy=rng.uniform(-45, -30),
            subcut_fat=rng.uniform(8, 30),
            canal_scale=rng.normal(1.0, 0.1),
            canal_aspect=rng.uniform(1.25, 1.6),
            vb_a=rng.uniform(20, 25),
            vb_b=rng.uniform(15, 18),
            muscle_scale=rng.uniform(0.85, 1.15),
            fat_thickness=rng.uniform(2.0, 4.5),
            lf_scale=rng.uniform(0.8, 1.2),
            compression_mix=rng.dirichlet([3.0, 2.0, 1.5]),
            rotation_deg=rng.normal(0, 4),
            shift_mm=rng.normal([0.0, 10.0], 5.0),
            gain=rng.uniform(900, 2400),
            gamma=rng.uniform(0.85, 1.15),
            bias_coeffs=rng.normal(0.0, 1.0, size=4),
            disc_health=rng.uniform(0.2, 1.0, size=6),
        )


@dataclass
class SliceSpec:
    """What varies per slice: level, distance to the disc, severity (grade units), cord radius."""

    level_index: int
    disc_offset_mm: float
    segment_mm: float
    severity_units: float  # 0 healthy, grade boundaries at 1, 2, 3
    cord_radius_mm: float


@dataclass
class RenderedSlice:
    image: np.ndarray  # float32 signal, before gain
    canal_box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels
    sac_area_mm2: float
    epidural_fat_mm: float


class SliceRenderer:
    """Renders slices on a fixed image grid; one renderer per patient keeps its pose and bias field."""

    def __init__(self, anatomy: PatientAnatomy, size: int, pixel_mm: float, snr: float = 25.0) -> None:
        self.anat = anatomy
        self.snr = snr
        self.size = size
        self.pixel_mm = pixel_mm
        centre = (size - 1) / 2.0
        cols, rows = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
        xi = (cols - centre) * pixel_mm - anatomy.shift_mm[0]
        yi = (rows - centre) * pixel_mm - anatomy.shift_mm[1]
        a = np.deg2rad(anatomy.rotation_deg)
        self.x = (np.cos(a) * xi + np.sin(a) * yi).astype(np.float32)
        self.y = (-np.sin(a) * xi + np.cos(a) * yi).astype(np.float32)
        u = (cols - centre) / size
        v = (rows - centre) / size
        c = anatomy.bias_coeffs
        # Coil sensitivity: smooth, brighter posteriorly (spine coil under the supine patient).
        self.bias = np.exp(
            0.35 * v + 0.12 * c[0] * u + 0.08 * c[1] * u * v + 0.1 * c[2] * (u * u + v * v)
        ).astype(np.float32)
        self.texture = gaussian_filter(
            np.random.default_rng(int(abs(c[3]) * 1e6)).normal(size=(size, size)), 3.0
        )
        self.texture = (self.texture / (self.texture.std() + 1e-6)).astype(np.float32)

    # -- primitives -------------------------------------------------------------------------------------------
    def _coverage(self, dist_mm: np.ndarray) -> np.ndarray:
        """Soft inside-ness from a signed distance (negative inside): anti-aliased edges."""
        return np.clip(0.5 - dist_mm / self.pixel_mm, 0.0, 1.0)

    def _window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        """Pixel rows/cols that can contain anything within ``radius`` mm of anatomical point (cx, cy)."""
        a = np.deg2rad(self.anat.rotation_deg)
        xi = np.cos(a) * cx - np.sin(a) * cy + self.anat.shift_mm[0]
        yi = np.sin(a) * cx + np.cos(a) * cy + self.anat.shift_mm[1]
        centre = (self.size - 1) / 2.0
        col, row = xi / self.pixel_mm + centre, yi / self.pixel_mm + centre
        r = radius / self.pixel_mm + 2
        r0, r1 = int(max(0, np.floor(row - r))), int(min(self.size, np.ceil(row + r) + 1))
        c0, c1 = int(max(0, np.floor(col - r))), int(min(self.size, np.ceil(col + r) + 1))
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def ellipse(
        self,
        img: np.ndarray,
        cx: float,
        cy: float,
        a: float,
        b: float,
        value: float | np.ndarray,
        angle: float = 0.0,
    ) -> None:
        """Paint a filled ellipse (half-axes a, b mm, rotated by ``angle`` degrees) with ``value``."""
        win = self._window(cx, cy, max(a, b))
        x, y = self.x[win] - cx, self.y[win] - cy
        if angle:
            t = np.deg2rad(angle)
            x, y = np.cos(t) * x + np.sin(t) * y, -np.sin(t) * x + np.cos(t) * y
        rho = np.sqrt((x / a) ** 2 + (y / b) ** 2)
        m = self._coverage((rho - 1.0) * min(a, b))
        val = value[win] if isinstance(value, np.ndarray) else value
        img[win] = img[win] * (1 - m) + val * m

    # -- the slice --------------------------------------------------------------------------------------------
    def render(self, spec: SliceSpec, rng: np.random.Generator) -> RenderedSlice:
        an = self.anat
        lvl = spec.level_index
        mix = an.compression_mix  # disc / ligamentum flavum / facet share of the compression
        u = float(np.clip(spec.severity_units, 0.0, 4.5))
        near_disc = float(np.exp(-((spec.disc_offset_mm / (0.16 * spec.segment_mm)) ** 2)))  # 1 at the disc
        in_disc = abs(spec.disc_offset_mm) < 0.14 * spec.segment_mm
        near_facets = abs(spec.disc_offset_mm) < 0.3 * spec.segment_mm
        caudal = lvl / 5.0

        # Canal geometry first, since everything around the canal is placed relative to it.
        sac_area = NORMAL_SAC_AREA[lvl] * an.canal_scale**2 / (1.0 + 0.5 * u)
        fat = an.fat_thickness * (1.0 - smoothstep(2.55, 3.15, u)) * (1.0 - 0.12 * min(u, 2.0))
        lf = (1.8 + (0.6 + 1.6 * u * mix[1] * 3) * near_disc) * an.lf_scale
        trefoil = 0.22 * float(smoothstep(0.45, 0.9, caudal))

        def sac_shape(theta: np.ndarray) -> np.ndarray:
            """Unit sac outline: oval (trefoil low in the spine), squeezed from where the compression comes."""
            base = 1.0 / np.sqrt((np.cos(theta) / an.canal_aspect) ** 2 + np.sin(theta) ** 2)
            pressure = (
                0.33
                * near_disc
                * min(u, 4.0)
                * (
                    mix[0] * angular_window(theta, -90, 2)
                    + mix[1] * (angular_window(theta, 40, 6) + angular_window(theta, 140, 6))
                    + mix[2] * np.cos(theta) ** 4
                )
            )
            return (
                base * (1.0 + trefoil * np.cos(3 * (theta - np.pi / 2))) * np.clip(1.0 - pressure, 0.35, 1.0)
            )

        # Scale the outline so that the sac has the target area (area = 1/2 integral of r^2 d theta).
        grid = np.linspace(-np.pi, np.pi, 721)
        k = float(np.sqrt(sac_area / (0.5 * np.trapezoid(sac_shape(grid) ** 2, grid))))
        sac_front = k * float(sac_shape(np.array([-np.pi / 2]))[0]) + 0.4  # anterior canal wall (mm)
        sac_back = k * float(sac_shape(np.array([np.pi / 2]))[0]) + 0.4 + fat
        sac_side = k * float(sac_shape(np.array([0.0]))[0])

        win = self._window(0.0, 0.0, 32.0)
        x, y = self.x[win], self.y[win]
        theta = np.arctan2(y, x)
        rho = np.hypot(x, y)
        w_post = angular_window(theta, 90, 2)
        w_pl = angular_window(theta, 40, 6) + angular_window(theta, 140, 6)
        r_sac = k * sac_shape(theta)
        r_canal = r_sac + 0.4 + fat * w_post + 0.35 * fat * w_pl
        r_lf = r_canal + lf * (w_pl + 0.6 * w_post)
        r_bone = r_lf + 3.0 + 2.0 * w_post

        img = np.zeros((self.size, self.size), dtype=np.float32)
        # Body wall, subcutaneous fat, abdomen, psoas and paraspinal muscles.
        self.ellipse(img, 0, an.body_cy, an.body_a, an.body_b, FAT)
        self.ellipse(
            img,
            0,
            an.body_cy,
            an.body_a - an.subcut_fat,
            an.body_b - 0.8 * an.subcut_fat,
            BOWEL + 0.06 * self.texture,
        )
        vb_a = an.vb_a * (1 + 0.18 * caudal)
        vb_cy = -(sac_front + an.vb_b - 0.5)
        psoas = (8 + 14 * caudal) * an.muscle_scale
        for side in (-1, 1):
            self.ellipse(img, side * (vb_a + psoas * 0.7), vb_cy + 4, psoas, psoas * 0.75, PSOAS)
            mx = side * (sac_side + 20) * an.muscle_scale
            self.ellipse(
                img, mx, sac_back + 18, 23 * an.muscle_scale, 26, MUSCLE + 0.03 * self.texture, side * 10
            )
            self.ellipse(img, mx * 1.1, sac_back + 22, 1.8, 14, FAT * 0.8, side * 15)  # intermuscular fat

        # Bony ring (pedicles and laminae), spinous process, facets near the disc.
        sub = img[win]
        bone = self._coverage(rho - r_bone)
        sub[:] = sub * (1 - bone) + CORTEX * bone
        img[win] = sub
        self.ellipse(img, 0, sac_back + lf + 18, 3.0, 16, CORTEX)
        self.ellipse(img, 0, sac_back + lf + 20, 1.6, 12, MARROW * 0.7)
        if near_facets:
            facet = (4.5 + 3.0 * u * mix[2] * near_disc) * (1 + 0.1 * caudal)
            for side in (-1, 1):
                fx, fy = side * (sac_side + facet * 0.9), 0.45 * sac_back + 2
                self.ellipse(img, fx, fy, facet, facet * 1.25, CORTEX, side * 30)
                self.ellipse(img, fx, fy, facet * 0.7, facet * 0.95, MARROW * 0.8, side * 30)
                self.ellipse(img, fx, fy, 0.45, facet * 1.1, CSF * 0.6, side * 30)  # joint fluid
        else:
            for side in (-1, 1):
                px = side * (sac_side + 4.5)
                self.ellipse(img, px, -0.4 * sac_front, 4.5, 8.0, CORTEX, side * 15)
                self.ellipse(img, px, -0.4 * sac_front, 2.8, 6.0, MARROW, side * 15)

        # Vertebral body, or disc with its posterior bulge; its back wall is the canal's front.
        if in_disc:
            nucleus = ANNULUS + (NUCLEUS - ANNULUS) * an.disc_health[lvl]
            self.ellipse(img, 0, vb_cy, vb_a + 1.5, an.vb_b + 0.5, ANNULUS)
            self.ellipse(img, 0, vb_cy - 1, vb_a * 0.55, an.vb_b * 0.5, nucleus)
            bulge = 0.8 + 4.0 * u * mix[0] * near_disc
            self.ellipse(img, 0, -sac_front + 0.5, 0.55 * vb_a, bulge, ANNULUS * 0.85)
        else:
            self.ellipse(img, 0, vb_cy, vb_a, an.vb_b, CORTEX)
            self.ellipse(img, 0, vb_cy, vb_a - 1.5, an.vb_b - 1.5, MARROW + 0.04 * self.texture)

        # Ligamentum flavum, epidural fat, then the dural sac with its contents.
        sub = img[win]
        for dist, val in ((rho - r_lf, LIGAMENT), (rho - r_canal, FAT)):
            m = self._coverage(dist)
            sub[:] = sub * (1 - m) + val * m
        sac = self._coverage(rho - r_sac)
        contents = self._sac_contents(x, y, lambda t: k * sac_shape(t), spec, u, rng)
        sub[:] = sub * (1 - sac) + contents * sac
        img[win] = sub

        rows, cols = np.nonzero(self._coverage(rho - r_canal) > 0.5)
        margin = 1.5 / self.pixel_mm
        box = (
            cols.min() + win[1].start - margin,
            rows.min() + win[0].start - margin,
            cols.max() + win[1].start + 1 + margin,
            rows.max() + win[0].start + 1 + margin,
        )
        box = tuple(float(np.clip(v, 0, self.size)) for v in box)
        area = float(np.sum(sac) * self.pixel_mm**2)
        return RenderedSlice(self._acquire(img, rng), box, area, float(fat))

    def _sac_contents(
        self,
        x: np.ndarray,
        y: np.ndarray,
        sac_radius: Callable[[np.ndarray], np.ndarray],
        spec: SliceSpec,
        u: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """CSF with cord or rootlets; rootlets settle dorsally when healthy, fill the sac, then clump (C/D)."""
        out = np.full(x.shape, CSF, dtype=np.float32)
        half_depth = float(sac_radius(np.array([np.pi / 2]))[0])
        cord_r = spec.cord_radius_mm
        if cord_r >= 0.3:
            cy = -0.1 * half_depth
            m = self._coverage(np.hypot(x / 1.2, (y - cy) / 0.95) - cord_r)
            out = out * (1 - m) + CORD * m
        n_roots = int(ROOTLET_COUNT[spec.level_index] * (1.0 - smoothstep(CORD_VISIBLE_MM, 3.5, cord_r)))
        if n_roots:
            dependent = float(np.clip(1.0 - u / 1.4, 0.0, 1.0))
            for _ in range(n_roots):
                if rng.random() < dependent:
                    ang = rng.normal(np.pi / 2, 0.55)
                    frac = rng.uniform(0.45, 0.8)
                else:
                    ang = rng.uniform(-np.pi, np.pi)
                    frac = np.sqrt(rng.uniform(0.0, 0.72))
                reach = float(sac_radius(np.array([ang]))[0]) * frac
                rx, ry = reach * np.cos(ang), reach * np.sin(ang)
                rr = rng.uniform(0.65, 1.05)
                if cord_r > 0.3 and np.hypot(rx, ry + 0.1 * half_depth) < cord_r + rr:
                    continue
                m = self._coverage(np.hypot(x - rx, y - ry) - rr)
                out = out * (1 - m) + ROOTLET * m
        # Severe: rootlets and CSF no longer recognisable; the sac reads as one intermediate signal.
        clump = float(smoothstep(1.55, 2.35, u))
        if clump > 0:
            out = (1 - clump) * out + clump * (CLUMPED + 0.02 * self.texture[: out.shape[0], : out.shape[1]])
        return out

    def _acquire(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Partial-volume blur, contrast, coil bias and Rician magnitude noise."""
        img = gaussian_filter(img, 0.6 * 0.69 / self.pixel_mm)
        img = np.power(np.clip(img, 0, None), self.anat.gamma) * self.bias
        sigma = 1.0 / self.snr
        real = img + rng.normal(0.0, sigma, img.shape)
        imag = rng.normal(0.0, sigma, img.shape)
        return np.hypot(real, imag).astype(np.float32)
