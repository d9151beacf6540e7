"""``lumbar-cv experiment=X``: every fold for every rater of ``cv.raters``, in one run folder, then the report.

A fold whose ``metrics.json`` exists is skipped, so re-running the same command in the same folder resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_DIR, exit_on_contract_error, log, output_dir
from lumbar_lightning.evaluation.report import write_cv_report
from lumbar_lightning.runner import run_fold
from lumbar_lightning.tracking import wandb_run, wandb_settings
from lumbar_lightning.train import fold_line


def fold_dirs(root: Path, raters: list[str], folds: list[int]) -> dict[tuple[str, int], Path]:
    return {(r, k): root / r / f"fold_{k}" for r in raters for k in folds}


@exit_on_contract_error
def cross_validate(cfg: DictConfig, root: Path | None = None) -> dict[str, Any]:
    root = Path(root) if root else output_dir()
    raters = list(cfg.cv.raters)
    folds = list(cfg.cv.folds) if cfg.cv.get("folds") is not None else list(range(cfg.data.num_folds))
    for (rater, fold), out in fold_dirs(root, raters, folds).items():
        if (out / "metrics.json").exists():
            log.info(f"fold {fold} rater {rater}: already done, skipped")
            continue
        metrics = run_fold(cfg, fold, rater, out, tracking_dir=root / "logs")
        log.info(f"fold {fold} rater {rater}: {fold_line(metrics)}")
    summary = write_cv_report(
        root, seed=cfg.seed, title=f"lumbar-lightning cross-validation: {cfg.experiment_name}"
    )
    log_summary_run(cfg, root, summary)
    for task in ("rootlet", "grade"):
        for pair, row in summary[task].items():
            log.info(
                f"{task} {pair}: {100 * row['accuracy']:.1f}% (macro F1 {100 * row['f1_macro']:.1f}, n={row['n']})"
            )
    log.info(f"report: {root / 'report.md'}")
    if wandb_settings(cfg) is not None:
        log.info(f"W&B offline runs: {root / 'logs' / 'wandb'} (upload later with `wandb sync`)")
    return summary


def log_summary_run(cfg: DictConfig, root: Path, summary: dict[str, Any]) -> None:
    """The cross-validation summary as its own W&B run in the group: study tables, scalars, figures."""
    with wandb_run(cfg, "cv-summary", root / "logs", job_type="cv-summary") as run:
        if run is None:
            return
        import wandb

        columns = [
            "pair",
            "n",
            "accuracy",
            "ci_low",
            "ci_high",
            "f1_macro",
            "kappa",
            "kappa_quadratic",
            "ttest_p",
        ]
        for task in ("rootlet", "grade"):
            rows = [
                [
                    pair,
                    r["n"],
                    r["accuracy"],
                    *r["accuracy_ci95"],
                    r["f1_macro"],
                    r["kappa"],
                    r["kappa_quadratic"],
                    r["ttest"]["p"],
                ]
                for pair, r in summary[task].items()
            ]
            run.log({f"study/{task}": wandb.Table(columns=columns, data=rows)})
            run.log(
                {f"figures/confusion_{task}": wandb.Image(str(root / "figures" / f"confusion_{task}.png"))}
            )
            run.summary.update(
                {f"{task}/{pair}/accuracy": r["accuracy"] for pair, r in summary[task].items()}
            )


@hydra.main(config_path=CONF_DIR, config_name="cv", version_base="1.3")
def main(cfg: DictConfig) -> None:
    cross_validate(cfg)


if __name__ == "__main__":
    main()
