"""A finished CV run's own test folds read again (``lumbar-evaluate run_dir=CV_RUN folds=own serve.flip_tta=true``).

Some settings change only how trained weights are read (``inference.ensemble.Serving``: the mirror image, the
series box choice). Each fold's classifier grades its own test patients again with them, so the change is
measured on exactly the images and checkpoints of the run, without training again and without a fold ever seeing
a patient it was trained on. The result is laid out as a CV run of its own (``<rater>/fold_<k>/predictions.csv``
and ``metrics.json``, ``cv_summary.json``, ``report.md``), so every tool that reads a run (``lumbar-compare``,
``lumbar-cohorts``) sets it beside the original. The run folder itself is never written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.data.datamodules import load_dataset
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.grading import activate_from
from lumbar_lightning.evaluation.chained import record_chained
from lumbar_lightning.evaluation.report import write_cv_report
from lumbar_lightning.inference.ensemble import Serving, load_fold_pipeline
from lumbar_lightning.inference.labelled import predict_test_images
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.layout import RunLayout
from lumbar_lightning.tracking.wandb import log_summary_run

log = logging.getLogger("lumbar_lightning")
READ_AGAIN_FILE = "read_again.json"


def evaluate_own_folds(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Grade each tested fold of ``run_dir`` on its own test patients, read with ``cfg.serve``; write into ``out``."""
    run_dir, out = Path(cfg.run_dir), Path(out)
    if run_dir.resolve() == out.resolve():
        raise DataContractError(f"{out}: the output folder must not be the run folder it reads")
    folds = RunLayout(run_dir).folds(having="predictions")
    if not folds:
        raise DataContractError(
            f"{run_dir}: no tested fold (<rater>/fold_<k>/predictions.csv): is it a lumbar-cv run?"
        )
    serve = Serving.of(cfg.get("serve"))
    run_cfg = OmegaConf.load(folds[0].config)  # the run's own data set, cache and pseudonyms
    activate_from(run_cfg)
    dataset = load_dataset(run_cfg.data.data_dir, run_cfg.data.get("cache_dir"), run_cfg.data.pseudonym_salt)
    for fold in folds:
        before = pd.read_csv(fold.predictions, dtype=str, keep_default_na=False)
        rater = str(before["trained_on"].iloc[0])
        pipeline = load_fold_pipeline(fold.dir, "cpu", int(cfg.data.eval_batch_size), serve=serve)
        after = predict_test_images(pipeline, dataset, before["patient"].unique(), fold.fold, rater)
        if "baseline_grade" in before:  # the baseline reads the rater's boxes: nothing here changes it
            after["baseline_grade"] = (
                before.set_index("sop_instance_uid")["baseline_grade"]
                .reindex(after["sop_instance_uid"])
                .to_numpy()
            )
        target = RunLayout(out).fold(rater, fold.fold)
        target.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target.predictions, after.to_csv(index=False))
        # Training-side entries (detector, the stages on the rater's boxes) stay as the run measured them.
        metrics = record_chained(json.loads(fold.metrics.read_text()), after, rater)
        atomic_write_text(target.metrics, json.dumps(metrics, indent=2, default=float))
        log.info(
            f"{rater} fold {fold.fold}: grade chained {100 * metrics['grade']['chained']['accuracy']:.1f}%"
        )
    read = {"run_dir": str(run_dir), "serve": serve.as_dict(), "folds": len(folds)}
    atomic_write_text(out / READ_AGAIN_FILE, json.dumps(read, indent=2))
    summary = write_cv_report(
        out,
        seed=int(run_cfg.seed),
        title=f"lumbar-lightning cross-validation read again: {run_dir.name} ({_settings(serve)})",
        extra={"read_again": read},
        image_of=dataset.cache.get,
    )
    log_summary_run(cfg, out, summary)
    log.info(f"report: {out / 'report.md'}")
    return summary


def _settings(serve: Serving) -> str:
    changed = {k: v for k, v in serve.as_dict().items() if v is not None}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "as recorded"
