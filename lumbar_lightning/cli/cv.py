"""``lumbar-cv experiment=X``: the cross-validation of every fold and rater into one run folder, then the report.

Re-running the same command in the same folder resumes it (finished folds are skipped).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, output_dir
from lumbar_lightning.engine.cross_validation import cross_validate


@hydra.main(config_path=CONF_PATH, config_name="cv", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_contract_error(cfg):
        cross_validate(cfg, output_dir())


if __name__ == "__main__":
    main()
