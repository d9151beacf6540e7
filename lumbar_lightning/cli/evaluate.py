"""``lumbar-evaluate run_dir=CV_RUN data_dir=OTHER``: a finished CV run's fold ensembles on another labelled data set;
``folds=own``: its own test folds read again (``serve.*``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, output_dir
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.evaluation.external import evaluate
from lumbar_lightning.evaluation.own_folds import evaluate_own_folds

MODES = {"ensemble": evaluate, "own": evaluate_own_folds}


@hydra.main(config_path=CONF_PATH, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_contract_error(cfg):
        if cfg.folds not in MODES:
            raise DataContractError(f"folds={cfg.folds}: must be one of {sorted(MODES)}")
        MODES[cfg.folds](cfg, output_dir())


if __name__ == "__main__":
    main()
