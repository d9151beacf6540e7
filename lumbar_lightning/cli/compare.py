"""``lumbar-compare run_a=DIR run_b=DIR``: two finished CV runs side by side, with significance tests."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, log, output_dir
from lumbar_lightning.data.grading import activate_runs
from lumbar_lightning.evaluation.compare import write_comparison


def compare(cfg: DictConfig) -> dict:
    activate_runs(cfg.run_a, cfg.run_b, fallback=cfg)  # the runs' own scheme, whatever grading= says here
    out = Path(cfg.out_dir) if cfg.get("out_dir") else output_dir()
    result = write_comparison(cfg.run_a, cfg.run_b, out, seed=cfg.seed)
    for task in ("rootlet", "grade"):
        for name, t in result[task]["tests"].items():
            verdict = "significant" if t["significant"] else "not significant"
            log.info(
                f"{task} {name}: {100 * t['accuracy_a']:.1f}% vs {100 * t['accuracy_b']:.1f}% "
                f"(McNemar p={t['mcnemar']['p']:.3g}; {verdict})"
            )
    log.info(f"comparison: {out / 'comparison.md'}")
    return result


@hydra.main(config_path=CONF_PATH, config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_contract_error(cfg):
        compare(cfg)


if __name__ == "__main__":
    main()
