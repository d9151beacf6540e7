"""The phantom families and the cohort a ``phantom`` config node describes, made on first use (``ensure_phantom``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.data.phantom.cohort import PhantomCohort, PhantomConfig
from lumbar_lightning.data.phantom.samples import samples_figure
from lumbar_lightning.data.phantom.site import SiteCohort, SiteConfig
from lumbar_lightning.numerics import numpy_numerics

log = logging.getLogger("lumbar_lightning.phantom")


#: Phantom families by ``phantom.family``: the default phantom, and the independently written site family whose
#: presets (``phantom=site_b``, ``site_c``, ``site_d``) differ the way hospitals differ.
FAMILIES: dict[str, tuple[type, type]] = {
    "default": (PhantomConfig, PhantomCohort),
    "site": (SiteConfig, SiteCohort),
}


def phantom_config(cfg: DictConfig) -> PhantomConfig | SiteConfig:
    """The cohort configuration a ``phantom`` config node describes (its ``family`` picks the generator)."""
    values: dict[str, Any] = OmegaConf.to_container(cfg.phantom, resolve=True)  # type: ignore[assignment]
    for key in ("n_patients", "seed"):  # lumbar-synth's top-level shorthands
        if cfg.get(key) is not None:
            values[key] = cfg[key]
    family = values.pop("family", "default")
    values.pop("dir_name", None)
    if family not in FAMILIES:
        raise ValueError(f"phantom.family={family!r}: known families are {sorted(FAMILIES)}")
    return FAMILIES[family][0].from_dict(values)


def _cohort_class(config: PhantomConfig | SiteConfig) -> type:
    return next(cohort for conf, cohort in FAMILIES.values() if isinstance(config, conf))


def ensure_phantom(
    out_dir: Path | str, config: PhantomConfig | SiteConfig, workers: int | None = None
) -> bool:
    """Generate the cohort unless ``out_dir`` already holds one made with the same configuration and numpy
    numerics (a cohort written with other kernels has other pixels).

    Returns True when it generated. This is what makes the default data set appear on first use.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / "phantom.json"
    if manifest.is_file() and (out_dir / "labels.csv").is_file():
        try:
            recorded = json.loads(manifest.read_text())
            same_config = recorded.get("config") == json.loads(json.dumps(config.to_dict()))
            if same_config and recorded.get("numerics") == numpy_numerics():
                return False
        except json.JSONDecodeError:
            pass
    log.info(f"generating the phantom cohort ({config.n_patients} patients, seed {config.seed}) in {out_dir}")
    cohort = _cohort_class(config).generate(config, out_dir, workers=workers)
    samples_figure(out_dir, out_dir / "samples.png")
    log.info(
        f"{cohort.n_images} images in {cohort.seconds:.1f}s ({cohort.n_images / cohort.seconds:.0f} slices/s)"
    )
    return True
