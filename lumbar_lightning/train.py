"""``lumbar-train experiment=X data.fold=k data.rater=A1``: the three stages for one fold and one rater."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_DIR, exit_on_contract_error, log, output_dir
from lumbar_lightning.runner import run_fold


@exit_on_contract_error
def train(cfg: DictConfig) -> dict:
    out = output_dir() / cfg.data.rater / f"fold_{cfg.data.fold}"
    metrics = run_fold(cfg, int(cfg.data.fold), str(cfg.data.rater), out)
    log.info(f"fold {cfg.data.fold} rater {cfg.data.rater}: {fold_line(metrics)}")
    log.info(f"outputs: {out}")
    return metrics


def fold_line(metrics: dict) -> str:
    """One line a person can read: detection, rootlet and grade agreement of the chained pipeline."""
    det = metrics["detector"]
    root, grade = metrics["rootlet"]["chained"], metrics["grade"]["chained"]
    return (
        f"detection rate {100 * det.get('test/acc', float('nan')):.1f}% (IoU {det.get('test/iou', float('nan')):.2f}), "
        f"rootlet/cord {100 * root['accuracy']:.1f}%, grade {100 * grade['accuracy']:.1f}% "
        f"(macro F1 {100 * grade['f1_macro']:.1f}), {metrics['seconds']:.0f}s"
    )


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics["grade"]["gt_box"].get("best_val")


if __name__ == "__main__":
    main()
