"""Cross-validation (``lumbar-cv``): every fold for every rater of ``cv.raters``, in one run folder, then the report.

A fold whose ``metrics.json`` exists is skipped, so re-running the same command in the same folder resumes.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.engine.detector_sharing import consensus_detector, share_detector
from lumbar_lightning.engine.fold import prepare_data, run_fold
from lumbar_lightning.engine.objective import fold_line
from lumbar_lightning.evaluation.report import write_cv_report, write_seeds_report
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.layout import RunLayout
from lumbar_lightning.tracking.wandb import log_summary_run, wandb_settings

log = logging.getLogger("lumbar_lightning")


Job = list[tuple[str, int, Path]]  # (rater, fold, folder) run in order in one process


def _run_job(cfg: DictConfig, job: Job, tracking: Path) -> list[tuple[str, int, dict[str, Any]]]:
    """The folds of one job in order; a consensus detector that another rater's fold of the same fold number
    trained (earlier in this job, or in an earlier run of this folder) is reloaded, not trained again."""
    results = []
    for rater, fold, out in job:
        siblings = [f.dir for f in RunLayout(out.parent.parent).folds() if f.fold == fold]
        for sibling in siblings:
            if sibling != out and share_detector(cfg, sibling, out):
                break
        results.append((rater, fold, run_fold(cfg, fold, rater, out, tracking_dir=tracking)))
    return results


def end_with_parent(parent: int) -> None:
    """Worker initializer: the worker ends when ``lumbar-cv`` ends, killed or not (Linux; elsewhere a no-op).

    SIGKILL, not SIGTERM: inside a fit Lightning catches SIGTERM and turns it into an exception, which the pool's
    worker loop catches too; the orphaned worker then trained the next queued fold into the same run folder while
    the resumed run trained it as well. A killed worker stops where it is, which resuming is built for.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: SIGKILL to this process when its parent exits
    if os.getppid() != parent:  # the parent was already gone before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _run_job_in_worker(
    cfg_values: dict[str, Any], job: Job, tracking: str, threads: int
) -> list[tuple[str, int, dict[str, Any]]]:
    """A job in a worker process (spawned, so no thread pool is inherited half-initialised); run_fold sets
    torch's thread count from ``threads``."""
    quiet_lightning()
    return _run_job(OmegaConf.create({**cfg_values, "threads": threads}), job, Path(tracking))


def quiet_lightning() -> None:
    """Lightning's per-Trainer notices (accelerator lines, tips, "fit stopped") at warning level only: a worker
    builds ~10 Trainers per fold, and the parent prints one line per finished fold instead."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    # Lightning 2.6's own deprecation notice under torch 2.14, once per Trainer:
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def plan_jobs(cfg: DictConfig, root: Path, raters: list[str], folds: list[int]) -> list[Job]:
    """The (rater, fold) runs not done yet, grouped into jobs: with a consensus detector, one job per fold runs
    its raters one after the other so the detector is trained once per fold; otherwise one job per run."""
    todo: dict[int, Job] = {}
    layout = RunLayout(root)
    for rater in raters:
        for fold in folds:
            out = layout.fold(rater, fold)
            if out.metrics.exists():
                log.info(f"fold {fold} rater {rater}: already done, skipped")
            else:
                todo.setdefault(fold, []).append((rater, fold, out.dir))
    if consensus_detector(cfg):
        return [todo[k] for k in sorted(todo)]
    return [[run] for rater in raters for k in sorted(todo) for run in todo[k] if run[0] == rater]


def cross_validate(cfg: DictConfig, root: Path) -> dict[str, Any]:
    """Run every (rater, fold) not done yet, ``cv.workers`` jobs at a time, then write the report.

    ``seeds=[0,1,2]``: the whole cross-validation once per seed (``seed_<s>/``, each a run folder of its own,
    resumable alike), then ``seeds_summary.json`` and ``seeds_report.md``: every pair as mean and spread over
    seeds, since one draw cannot tell 91.5 from 91.8.
    """
    root = Path(root)
    run = RunLayout(root)
    if cfg.get("seeds"):
        per_seed = {}
        for seed in cfg.seeds:
            seed_cfg = OmegaConf.merge(cfg, {"seed": int(seed), "seeds": None})
            per_seed[int(seed)] = cross_validate(seed_cfg, run.seed(int(seed)).root)
        summary = write_seeds_report(
            root, per_seed, title=f"lumbar-lightning over seeds: {cfg.experiment_name}"
        )
        for task in ("rootlet", "grade"):
            for pair, row in summary[task].items():
                acc = row["accuracy"]
                log.info(
                    f"{task} {pair} over seeds {list(per_seed)}: {100 * acc['mean']:.1f} +- {100 * acc['std']:.1f}%"
                )
        log.info(f"report: {run.seeds_report}")
        return summary
    raters = list(cfg.cv.raters)
    folds = list(cfg.cv.folds) if cfg.cv.get("folds") is not None else list(range(cfg.data.num_folds))
    jobs = plan_jobs(cfg, root, raters, folds)
    workers = max(1, min(int(cfg.cv.get("workers") or 1), len(jobs) or 1))
    start = time.perf_counter()
    if workers == 1:
        for job in jobs:
            for rater, fold, metrics in _run_job(cfg, job, run.logs):
                log.info(f"fold {fold} rater {rater}: {fold_line(metrics)}")
    else:
        prepare_data(cfg)  # generate and ingest once, before the workers read the cache
        values = OmegaConf.to_container(cfg, resolve=True)
        # One line per finished fold instead of interleaved progress bars. ``threads`` is each fold's own thread
        # count, so a fold computes exactly as `lumbar-train threads=N` does (float sums depend on the thread
        # count); unset, the cores are shared out and the folds match single runs only at that count.
        values["trainer"]["enable_progress_bar"] = False
        threads = int(cfg.threads) if cfg.get("threads") else max(1, torch.get_num_threads() // workers)
        if not cfg.get("threads"):
            log.info(
                f"threads unset: {threads} per fold; a single-fold run matches these folds with threads={threads}"
            )
        values["threads"] = threads
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=end_with_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = [pool.submit(_run_job_in_worker, values, job, str(run.logs), threads) for job in jobs]
            for future in as_completed(futures):
                for rater, fold, metrics in future.result():
                    log.info(f"fold {fold} rater {rater}: {fold_line(metrics)}")
    if jobs or not run.timing.exists():  # a rerun with nothing left to train keeps the training run's timing
        atomic_write_text(
            run.timing,
            json.dumps(
                {
                    "seconds": time.perf_counter() - start,
                    "jobs": len(jobs),
                    "runs": sum(len(j) for j in jobs),
                    "workers": workers,
                }
            ),
        )
    summary = write_cv_report(
        root,
        seed=cfg.seed,
        title=f"lumbar-lightning cross-validation: {cfg.experiment_name}",
        image_of=prepare_data(cfg).cache.get,
    )
    log_summary_run(cfg, root, summary)
    for task in ("rootlet", "grade"):
        for pair, row in summary[task].items():
            log.info(
                f"{task} {pair}: {100 * row['accuracy']:.1f}% (macro F1 {100 * row['f1_macro']:.1f}, n={row['n']})"
            )
    log.info(f"report: {run.report}")
    if wandb_settings(cfg) is not None:
        log.info(f"W&B offline runs: {run.logs / 'wandb'} (upload later with `wandb sync`)")
    return summary
