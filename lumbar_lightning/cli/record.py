"""``lumbar-record run_dir=RUN readme=README [reference=DIR]``: a run's result table into an experiment README."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, log
from lumbar_lightning.data.grading import activate_runs
from lumbar_lightning.evaluation.record import record


@hydra.main(config_path=CONF_PATH, config_name="record", version_base="1.3")
def main(cfg: DictConfig) -> None:
    activate_runs(cfg.run_dir, fallback=cfg)  # the run's own grading scheme, whatever grading= says here
    record(cfg.run_dir, cfg.readme, cfg.get("reference"))
    log.info(f"recorded {cfg.run_dir} in {cfg.readme}")


if __name__ == "__main__":
    main()
