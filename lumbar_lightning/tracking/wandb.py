"""Weights & Biases runs: offline unless the user sets a mode or key; never a patient identifier.

Lightning's ``WandbLogger`` makes one run per rater/stage/fold; ``wandb_run`` makes the per-fold pipeline run and
the cross-validation summary run. Every run is finished before the next starts, so CV and multirun never merge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.data.grading import active
from lumbar_lightning.data.labels import LEVEL_INDEX, grades
from lumbar_lightning.layout import RunLayout

if TYPE_CHECKING:
    import lightning as L
    import pandas as pd


def wandb_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """``wandb.init`` arguments from ``logger.wandb`` (None when W&B is not a configured logger)."""
    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return None
    return {
        k: v
        for k, v in OmegaConf.to_container(node, resolve=True).items()
        if k in {"project", "group", "mode", "tags", "entity", "settings"}
    }


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain values (paths and settings only: no data)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


@contextlib.contextmanager
def wandb_run(cfg: DictConfig, name: str, save_dir: Path, job_type: str) -> Iterator[Any]:
    """A W&B run that is always finished, or ``None`` when W&B is off."""
    settings = wandb_settings(cfg)
    if settings is None:
        yield None
        return
    import wandb

    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        **settings,
        name=name,
        dir=str(save_dir),
        job_type=job_type,
        config=run_config(cfg),
        reinit="finish_previous",
    )
    try:
        yield run
    finally:
        run.finish()


def finish_active_run() -> None:
    """End whatever run Lightning's WandbLogger opened, so the next stage starts a run of its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def confusion_plot(y_true: list[int], y_pred: list[int], class_names: list[str], title: str) -> Any:
    import wandb

    return wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=class_names, title=title)


def log_confusion(trainer: L.Trainer, confmat: list[list[int]], classes: list[str], title: str) -> None:
    """A W&B confusion-matrix plot rebuilt from the counts (the run is Lightning's WandbLogger's)."""
    from lightning.pytorch.loggers import WandbLogger

    y_true = [i for i, row in enumerate(confmat) for j, n in enumerate(row) for _ in range(int(n))]
    y_pred = [j for i, row in enumerate(confmat) for j, n in enumerate(row) for _ in range(int(n))]
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and y_true:
            lg.experiment.log({"test/confusion_matrix": confusion_plot(y_true, y_pred, classes, title)})


def flat_scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``a/b/c`` keys (for loggers)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def log_pipeline_run(
    cfg: DictConfig, name: str, tracking_dir: Path, metrics: dict[str, Any], predictions: pd.DataFrame
) -> None:
    """The fold's chained results as a W&B run: metrics, confusion matrices, the per-image predictions table."""
    with wandb_run(cfg, name, tracking_dir, job_type="pipeline") as run:
        if run is None:
            return
        import wandb

        rater = metrics["rater"]
        run.log(flat_scalars({k: metrics[k] for k in ("detector", "rootlet", "grade") if k in metrics}))
        for task, column, classes in (
            ("rootlet", "level", list(LEVEL_INDEX)),
            ("grade", "grade", list(grades())),
        ):
            if task not in metrics:
                continue
            pred_col = "pred_level" if task == "rootlet" else "pred_grade"
            rows = predictions[(predictions[f"{column}_{rater}"] != "") & (predictions[pred_col] != "")]
            if len(rows):
                y_true = [classes.index(v) for v in rows[f"{column}_{rater}"]]
                y_pred = [classes.index(v) for v in rows[pred_col]]
                run.log(
                    {f"chained/{task}_confusion": confusion_plot(y_true, y_pred, classes, f"{name} {task}")}
                )
        run.log({"predictions": wandb.Table(dataframe=predictions.astype(str))})


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
            "gross_errors",
            *(f"recall_{g}" for g in active().severe),
            *(["weighted_log_loss"] if active().weights else []),
        ]
        for task in ("rootlet", "grade"):
            if not summary[task]:
                continue  # a stage the run did not have (stages=[detector, grade])
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
                    r.get("gross_errors"),
                    *(r.get("recall_per_class", {}).get(g) for g in active().severe),
                    *([r.get("weighted_log_loss")] if active().weights else []),
                ]
                for pair, r in summary[task].items()
            ]
            run.log({f"study/{task}": wandb.Table(columns=columns, data=rows)})
            run.log({f"figures/confusion_{task}": wandb.Image(str(RunLayout(root).confusion_figure(task)))})
            run.summary.update(
                {f"{task}/{pair}/accuracy": r["accuracy"] for pair, r in summary[task].items()}
            )
        for pair, r in summary["grade"].items():  # the headline beside accuracy, and the unforgivable errors
            run.summary.update(
                {
                    f"grade/{pair}/kappa_quadratic": r["kappa_quadratic"],
                    f"grade/{pair}/gross_errors": r["gross_errors"],
                }
            )
        for rater, stages in summary.get("calibration", {}).items():  # before and after temperature scaling
            for stage, r in stages.items():
                run.summary.update(
                    {f"calibration/{rater}/{stage}/{k}": r[k] for k in ("ece_before", "ece_after")}
                )
        for pair, curve in summary.get("referral", {}).get("pairs", {}).items():
            run.summary.update(
                {
                    f"referral/{pair}/accuracy_at_{round(100 * c)}": a
                    for c, a in zip(curve["coverage"], curve["accuracy"], strict=True)
                }
            )
        layout = RunLayout(root)
        for name, path in (("reliability", layout.reliability_figure), ("referral", layout.referral_figure)):
            if path.is_file():
                run.log({f"figures/{name}": wandb.Image(str(path))})
