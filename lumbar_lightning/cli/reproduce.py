"""``lumbar-reproduce``: re-train one demo fold and compare it with the reference (exit 1 if not reproduced);
``record=RUN`` and ``spread=[RUNS]`` write the reference instead."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, log, output_dir
from lumbar_lightning.engine.reproduce import SPREAD_FILE, record_reference, record_spread, reproduce


@hydra.main(config_path=CONF_PATH, config_name="reproduce", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_contract_error(cfg):
        if cfg.get("record"):
            count = record_reference(Path(cfg.record), Path(cfg.reference))
            log.info(f"recorded {count} fold(s) of {cfg.record} into {cfg.reference}")
        elif cfg.get("spread"):
            spread = record_spread([Path(d) for d in cfg.spread], Path(cfg.reference))
            n_folds, n_runs = len(spread["folds"]), len(cfg.spread)
            log.info(
                f"recorded the spread of {n_folds} fold(s) over {n_runs} runs into {cfg.reference}/{SPREAD_FILE}"
            )
        elif reproduce(cfg, output_dir()):
            sys.exit(1)


if __name__ == "__main__":
    main()
