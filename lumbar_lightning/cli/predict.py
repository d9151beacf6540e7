"""``lumbar-predict run_dir=DIR input=PATH out_dir=DIR``: the trained pipeline on a DICOM folder of any layout."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, output_dir


@hydra.main(config_path=CONF_PATH, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from lumbar_lightning.inference.predict import predict  # torch and the models load after Hydra composes

    with exit_on_contract_error(cfg):
        predict(cfg, Path(cfg.out_dir) if cfg.get("out_dir") else output_dir())


if __name__ == "__main__":
    main()
