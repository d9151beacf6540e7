"""``lumbar-record run_dir=RUN readme=README [reference=DIR]``: a run's result table into an experiment README."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.cli import CONF_PATH, log
from lumbar_lightning.data.grading import activate_from
from lumbar_lightning.evaluation.record import record
from lumbar_lightning.layout import RunLayout


@hydra.main(config_path=CONF_PATH, config_name="record", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = RunLayout(cfg.run_dir).hydra_config  # the run's own grading scheme, whatever grading= says here
    activate_from(OmegaConf.load(config) if config.is_file() else cfg)
    record(cfg.run_dir, cfg.readme, cfg.get("reference"))
    log.info(f"recorded {cfg.run_dir} in {cfg.readme}")


if __name__ == "__main__":
    main()
