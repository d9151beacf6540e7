"""``lumbar-cv experiment=X``: every fold for every rater of ``cv.raters``, in one run folder.

A fold whose ``metrics.json`` exists is skipped, so re-running the same command in the same folder resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_DIR, exit_on_contract_error, log, output_dir
from lumbar_lightning.data.dicom import atomic_write_text
from lumbar_lightning.runner import run_fold
from lumbar_lightning.train import fold_line


def fold_dirs(root: Path, raters: list[str], folds: list[int]) -> dict[tuple[str, int], Path]:
    return {(r, k): root / r / f"fold_{k}" for r in raters for k in folds}


@exit_on_contract_error
def cross_validate(cfg: DictConfig, root: Path | None = None) -> dict[str, Any]:
    root = Path(root) if root else output_dir()
    raters = list(cfg.cv.raters)
    folds = list(cfg.cv.folds) if cfg.cv.get("folds") is not None else list(range(cfg.data.num_folds))
    results: dict[str, dict[int, dict[str, Any]]] = {r: {} for r in raters}
    for (rater, fold), out in fold_dirs(root, raters, folds).items():
        done = out / "metrics.json"
        if done.exists():
            results[rater][fold] = json.loads(done.read_text())
            log.info(f"fold {fold} rater {rater}: already done, skipped")
            continue
        results[rater][fold] = run_fold(cfg, fold, rater, out)
        log.info(f"fold {fold} rater {rater}: {fold_line(results[rater][fold])}")
    summary = {
        "raters": raters,
        "folds": folds,
        "per_fold": {r: {str(k): _brief(v) for k, v in res.items()} for r, res in results.items()},
    }
    atomic_write_text(root / "cv_folds.json", json.dumps(summary, indent=2))
    log.info(f"cross-validation done: {root}")
    return summary


def _brief(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        "detection_rate": metrics["detector"].get("test/acc", float("nan")),
        "rootlet_acc": metrics["rootlet"]["chained"]["accuracy"],
        "grade_acc": metrics["grade"]["chained"]["accuracy"],
        "grade_f1": metrics["grade"]["chained"]["f1_macro"],
        "seconds": metrics.get("seconds", float("nan")),
    }


@hydra.main(config_path=CONF_DIR, config_name="cv", version_base="1.3")
def main(cfg: DictConfig) -> None:
    cross_validate(cfg)


if __name__ == "__main__":
    main()
