"""``lumbar-synth out_dir=DIR n_patients=N seed=S``: write the synthetic phantom cohort (the default data set);
``format=rsna2024`` writes it in the RSNA 2024 download's layout instead."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, log
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.phantom.families import ensure_phantom, phantom_config
from lumbar_lightning.data.rsna2024.replica import write_replica


def synth(cfg: DictConfig) -> Path:
    """Write (or keep) the cohort ``phantom`` describes in ``out_dir``."""
    config = phantom_config(cfg)
    out_dir = Path(cfg.out_dir)
    if cfg.get("format") == "rsna2024":  # the phantom in the RSNA 2024 download's layout, to test the adapter
        counts = write_replica(config, out_dir, workers=cfg.workers)
        log.info(
            f"rsna2024 replica: {counts['studies']} studies, {counts['axial_images']} axial images, "
            f"{counts['labelled_levels']} labelled levels in {out_dir}"
        )
        return out_dir
    if cfg.get("format") not in (None, "contract"):
        raise DataContractError(
            f"format={cfg.format!r}: known formats are contract (the default) and rsna2024"
        )
    if cfg.force and (out_dir / "phantom.json").exists():
        (out_dir / "phantom.json").unlink()
    if not ensure_phantom(out_dir, config, workers=cfg.workers):
        log.info(f"{out_dir} already holds this cohort (force=true regenerates it)")
    log.info(f"samples: {out_dir / 'samples.png'}")
    return out_dir


@hydra.main(config_path=CONF_PATH, config_name="synth", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_contract_error(cfg):
        synth(cfg)


if __name__ == "__main__":
    main()
