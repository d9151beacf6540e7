"""``lumbar-intensity-baseline data_dir=DIR rater=A1``: the logistic-regression grader's cross-validated agreement."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error


@hydra.main(config_path=CONF_PATH, config_name="intensity_baseline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from lumbar_lightning.data.dataset import LumbarDataset
    from lumbar_lightning.evaluation.baseline import intensity_baseline
    from lumbar_lightning.io import atomic_write_text

    with exit_on_contract_error(cfg):
        result = intensity_baseline(LumbarDataset.ingest(cfg.data_dir), cfg.rater)
    keys = ("rater", "n", "accuracy", "f1_macro", "f1_per_class", "kappa")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    atomic_write_text(Path(cfg.out), json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
