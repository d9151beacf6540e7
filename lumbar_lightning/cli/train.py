"""``lumbar-train experiment=X data.fold=k data.rater=A1``: the three stages for one fold and one rater.

Returns the sweep objective (``objective.metric``), so ``-m`` with Optuna or a grid optimises it.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, output_dir
from lumbar_lightning.engine.objective import train_for_objective


@hydra.main(config_path=CONF_PATH, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    with exit_on_contract_error(cfg):
        return train_for_objective(cfg, output_dir())


if __name__ == "__main__":
    main()
