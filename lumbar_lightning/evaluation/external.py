"""External validation (``lumbar-evaluate run_dir=CV_RUN data_dir=OTHER``), the way the field checks robustness.

A finished cross-validation's fold ensemble (every fold of each rater's classifier, probabilities averaged, as
``lumbar-predict`` grades) is applied unchanged to another labelled data set in the data contract. Every labelled
image is graded, and the study's tables are written against that data set's own raters (and truth, when it has
one): ``cv_summary.json`` (with the detection rate against the consensus box), ``report.md``, confusion-matrix
figures, the worst cases, ``<rater>/fold_external/predictions.csv`` and, with W&B on, a summary run. The data
set's raters keep their names, so ``A1-C1`` there is its rater A1 against the classifier trained on the run's A1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torchvision.ops import box_iou

from lumbar_lightning.data.datamodules import load_dataset
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.labels import BOX_COLUMNS, CONSENSUS
from lumbar_lightning.evaluation.report import write_cv_report
from lumbar_lightning.inference.ensemble import Ensemble, Serving, fold_dirs, load_fold_pipeline
from lumbar_lightning.inference.labelled import predict_test_images
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.layout import RunLayout
from lumbar_lightning.tracking.wandb import log_summary_run

log = logging.getLogger("lumbar_lightning")
EXTERNAL_FOLD = "external"


def trained_raters(run_dir: Path) -> list[str]:
    """The raters whose classifiers a run folder holds (``<rater>/fold_<k>/pipeline.json``)."""
    return sorted({f.rater for f in RunLayout(run_dir).folds(having="pipeline")})


def detection(predictions: pd.DataFrame, dataset: Any) -> dict[str, float]:
    """Detection rate (IoU >= 0.5) and mean IoU of the predicted box against the raters' consensus box."""
    truth = dataset.labels.for_rater(CONSENSUS).reindex(predictions["sop_instance_uid"])
    keep = truth[BOX_COLUMNS[0]].notna().to_numpy()
    pred = torch.tensor(predictions.loc[keep, [f"pred_{c}" for c in BOX_COLUMNS]].to_numpy(np.float32))
    ref = torch.tensor(truth.loc[keep, list(BOX_COLUMNS)].to_numpy(np.float32))
    iou = box_iou(pred, ref).diagonal() if len(pred) else torch.zeros(0)
    return {"rate": float((iou >= 0.5).float().mean()), "iou": float(iou.mean()), "n": len(iou)}


def evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Grade ``data_dir`` with ``run_dir``'s fold ensembles; write the study tables and report into ``out``."""
    run_dir, out = Path(cfg.run_dir), Path(out)
    raters = trained_raters(run_dir)
    if not raters:
        raise DataContractError(
            f"{run_dir}: no trained fold (<rater>/fold_<k>/pipeline.json): is it a lumbar-cv run?"
        )
    dataset = load_dataset(cfg.data_dir, cfg.data.get("cache_dir"), cfg.data.pseudonym_salt)
    patients = dataset.images["patient"].unique()
    serve = Serving.of(cfg.get("serve"))  # read as the run recorded unless serve.* says otherwise
    detections = {}
    # whether every classifier has a rootlet/cord stage (a run with stages=[detector, grade] has none)
    level_stage = True
    for rater in raters:
        folds = fold_dirs(run_dir, rater, None)
        ensemble = Ensemble(
            [load_fold_pipeline(d, "cpu", int(cfg.data.eval_batch_size), serve=serve) for d in folds]
        )
        level_stage &= all(p.rootlet is not None for p in ensemble.pipelines)
        log.info(f"classifier of {rater}: an ensemble of {len(folds)} fold(s) on {len(patients)} patient(s)")
        gt_boxes = rater in dataset.labels.raters  # the gt-box path needs this rater's boxes in the data set
        predictions = predict_test_images(ensemble, dataset, patients, EXTERNAL_FOLD, rater, gt_boxes)  # type: ignore[arg-type]
        target = RunLayout(out).fold(rater, EXTERNAL_FOLD).predictions
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, predictions.to_csv(index=False))
        detections[rater] = detection(predictions, dataset)
    lines = [
        "",
        "## Detection (against the raters' consensus box)",
        "",
        "| classifier of | rate % | mean IoU | n |",
    ]
    lines.append("|---|---|---|---|")
    lines += [f"| {r} | {100 * d['rate']:.1f} | {d['iou']:.3f} | {d['n']} |" for r, d in detections.items()]
    summary = write_cv_report(
        out,
        seed=cfg.seed,
        title=f"lumbar-lightning external validation: {Path(cfg.data_dir).name}",
        extra={
            "detection": detections,
            "external": {
                "run_dir": str(run_dir),
                "data_dir": str(cfg.data_dir),
                "raters": raters,
                "serve": serve.as_dict(),
            },
        },
        appendix="\n".join(lines) + "\n",
        level_stage=level_stage,  # no fold metrics here to read it from
        image_of=dataset.cache.get,  # the worst cases: what the run's classifiers miss on this data set
    )
    log_summary_run(cfg, out, summary)
    for pair, row in summary["grade"].items():
        log.info(
            f"grade {pair}: {100 * row['accuracy']:.1f}% (macro F1 {100 * row['f1_macro']:.1f}, n={row['n']})"
        )
    log.info(f"report: {out / 'report.md'}")
    return summary
