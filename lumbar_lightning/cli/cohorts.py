"""``lumbar-cohorts 'runs={default: RUN, site_b: RUN}'``: the generalisation table and its checks, as markdown."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH
from lumbar_lightning.evaluation.cohorts import cohort_table


@hydra.main(config_path=CONF_PATH, config_name="cohorts", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(cohort_table({str(name): str(run) for name, run in cfg.runs.items()}), end="")


if __name__ == "__main__":
    main()
