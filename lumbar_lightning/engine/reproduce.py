"""Reproduction (``lumbar-reproduce``, ``make reproduce FOLD=k``): train one fold again and compare it with the recorded reference.

Pinned numerics (``lumbar_lightning.numerics``) make a fold's numbers a function of the locked
environment, so the comparison depends on the environment fingerprints:

- the ``numerics`` parts match (packages, Python, numerics mode, kernel capabilities, threads): bit for bit;
  any difference fails;
- they differ: the differing fields are named, and each headline result must lie within the 99% prediction
  interval for one more seed, from the values recorded for several seeds with the reference (``spread.json``):
  a change of library or machine may move a result no more than a change of seed does. Entries that did not move
  across seeds (split sizes) must match exactly.

Timing fields and the environment itself are never compared as results. The exit status is 1 on failure, with
every differing entry listed.

Recording (see ``experiments/demo/README.md``):
``lumbar-reproduce record=RUN_DIR`` copies a finished run's folds and environment into ``reference``;
``lumbar-reproduce spread='[RUN_SEED0,RUN_SEED1,...]'`` records each entry's value in every run of the fold
they share.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.engine.fold import run_fold
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.layout import FoldLayout, RunLayout
from lumbar_lightning.numerics import differing_fields, fingerprint

#: Fields that describe the machine and the environment, not the result (the environment is compared on its own).
NOT_COMPARED = frozenset({"seconds", "fit_seconds", "environment"})
ENVIRONMENT_FILE = "environment.json"
SPREAD_FILE = "spread.json"

log = logging.getLogger("lumbar_lightning")


def comparable(tree: Any) -> Any:
    """The metrics without timing and environment fields (what a recorded reference keeps)."""
    if isinstance(tree, dict):
        return {k: comparable(v) for k, v in tree.items() if k not in NOT_COMPARED}
    if isinstance(tree, list):
        return [comparable(v) for v in tree]
    return tree


def leaves(tree: Any, path: str = "") -> dict[str, Any]:
    """Every leaf as ``a/b[0][1]`` (the paths ``diff_metrics`` prints)."""
    if isinstance(tree, dict):
        return {
            k: v
            for key, sub in tree.items()
            for k, v in leaves(sub, f"{path}/{key}" if path else str(key)).items()
        }
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in leaves(sub, f"{path}[{i}]").items()}
    return {path: tree}


def _same(expected: Any, actual: Any, tolerance: float = 0.0) -> bool:
    both_numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (expected, actual))
    if not both_numbers:
        return expected == actual
    if math.isnan(expected) or math.isnan(actual):
        return math.isnan(expected) and math.isnan(actual)
    return expected == actual or abs(expected - actual) <= tolerance


def diff_metrics(expected: Any, actual: Any, tolerance: dict[str, float] | None = None) -> list[str]:
    """Every entry that differs, as ``path: expected -> actual`` (NaN equals NaN). With ``tolerance`` (path ->
    allowed absolute difference), only those paths are compared, each within its own allowance."""
    a, b = leaves(expected), leaves(actual)
    paths = sorted(set(a) | set(b))
    if tolerance is not None:  # a changed environment: judged entries only, each within its interval
        paths = [p for p in paths if p in tolerance or (judged(p) and not (p in a and p in b))]
    tolerance = tolerance or {}
    out = []
    for path in paths:
        if path not in b:
            out.append(f"{path}: {a[path]!r} -> missing")
        elif path not in a:
            out.append(f"{path}: missing -> {b[path]!r}")
        elif not _same(a[path], b[path], tolerance.get(path, 0.0)):
            allowed = (
                f" (allowed +-{tolerance[path]:.4g}, from the seed-to-seed spread)"
                if path in tolerance
                else ""
            )
            out.append(f"{path}: {a[path]!r} -> {b[path]!r}{allowed}")
    return out


def reference_file(reference: Path, rater: str, fold: int) -> Path:
    """A metrics JSON itself, or ``<reference>/<rater>/fold_<k>.json`` / ``<rater>/fold_<k>/metrics.json``."""
    candidates = [
        reference,
        reference / rater / f"fold_{fold}.json",
        RunLayout(reference).fold(rater, fold).metrics,
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise DataContractError(f"no recorded metrics for rater {rater} fold {fold} under {reference}")


def _fold_metrics(run_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    return {
        (f.rater, int(f.fold)): json.loads(f.metrics.read_text())
        for f in RunLayout(run_dir).folds(having="metrics")
    }


def record_reference(run_dir: Path, reference: Path) -> int:
    """Copy every fold's metrics (timings dropped) and the run's environment from a finished run into
    ``reference``; returns the number of folds."""
    folds = _fold_metrics(run_dir)
    for (rater, fold), metrics in folds.items():
        target = Path(reference) / rater / f"fold_{fold}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(comparable(metrics), indent=1, sort_keys=True))
    environments = [m["environment"] for m in folds.values() if "environment" in m]
    if environments:
        atomic_write_text(Path(reference) / ENVIRONMENT_FILE, json.dumps(environments[0], indent=1))
    return len(folds)


def run_seed(run_dir: Path) -> int | None:
    """The seed a run trained with (``RunLayout.trained_config``: one seed's folder of a ``seeds=[...]`` run is
    read alike); None when it saved no config."""
    config = RunLayout(run_dir).trained_config
    return int(OmegaConf.load(config).seed) if config.is_file() else None


def record_spread(run_dirs: list[Path], reference: Path) -> dict[str, Any]:
    """Every numeric entry's value in each of several runs of the same fold(s) with different seeds, per rater
    (the first shared fold of each), written to ``<reference>/spread.json``."""
    runs = [_fold_metrics(d) for d in run_dirs]
    shared = sorted(set.intersection(*(set(r) for r in runs)))
    if len(runs) < 3 or not shared:
        raise DataContractError("spread needs three or more runs of the same fold (different seeds)")
    values: dict[str, dict[str, list[float]]] = {}
    for rater, fold in shared:
        if rater in values:
            continue
        per_run = [leaves(comparable(run[(rater, fold)])) for run in runs]
        values[rater] = {
            path: [float(r[path]) for r in per_run]
            for path in sorted(per_run[0])
            if all(_number(r.get(path)) for r in per_run)
        }
    spread = {
        "seeds": [run_seed(d) for d in run_dirs],
        "folds": [f"{r}/fold_{k}" for r, k in shared if values.get(r)],
        "values": values,
    }
    atomic_write_text(Path(reference) / SPREAD_FILE, json.dumps(spread, indent=1))
    return spread


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def judged(path: str) -> bool:
    """The entries a changed environment is judged on: each stage's headline results (detection rate, IoU, mAP,
    best validation value; accuracy, macro F1 and kappa on the rater's boxes and chained) and the split sizes.
    Per-class and confusion-matrix entries move with them and are counted, not judged one by one: with dozens of
    them, some would leave any interval by chance alone."""
    if path.startswith("splits/"):
        return True
    leaf = path.rsplit("/", 1)[-1]
    headline = {"acc", "iou", "map", "map_50", "f1", "accuracy", "f1_macro", "kappa", "kappa_quadratic"}
    return leaf == "best_val" or (leaf in headline and "/val/" not in path)


def tolerance_for(reference: Path, rater: str, confidence: float = 0.99) -> dict[str, float] | None:
    """Per judged entry, how far a new run may lie from the reference: the half-width of the ``confidence``
    prediction interval for one more seed, ``t(n-1) * sd * sqrt(1 + 1/n)`` over the recorded seeds' values.
    Entries that did not move across seeds (split sizes) get 0: they must match. None when nothing is recorded."""
    from scipy import stats

    path = Path(reference) / SPREAD_FILE
    if not path.is_file():
        return None
    values = json.loads(path.read_text()).get("values", {}).get(rater)
    if not values:
        return None
    out = {}
    for entry, vs in values.items():
        if judged(entry):
            n = len(vs)
            sd = statistics.stdev(vs)
            out[entry] = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd * math.sqrt(1 + 1 / n))
    return out


def reproduce(cfg: DictConfig, root: Path) -> list[str]:
    """Train ``data.fold`` for ``data.rater`` and compare; returns the failing differences (empty: reproduced)."""
    fold, rater, reference = int(cfg.data.fold), str(cfg.data.rater), Path(cfg.reference)
    expected = json.loads(reference_file(reference, rater, fold).read_text())
    recorded_env = reference / ENVIRONMENT_FILE
    environment = json.loads(recorded_env.read_text()) if recorded_env.is_file() else {}
    out = RunLayout(root).fold(rater, fold).dir
    metrics = run_fold(cfg, fold, rater, out)
    changed = differing_fields(environment, metrics.get("environment", fingerprint()))
    actual = json.loads(json.dumps(comparable(metrics), default=float))  # as the recorded JSON holds it
    tolerance = tolerance_for(reference, rater) if changed else None
    if changed:
        log.warning(f"the environment differs from the reference's in: {', '.join(changed)}")
        if tolerance is None:
            log.warning(f"no {SPREAD_FILE} under {reference}: comparing bit for bit anyway")
        else:
            where = reference / SPREAD_FILE
            log.warning(
                f"so each headline result must lie in the 99% prediction interval of the seeds in {where}"
            )
    differences = diff_metrics(comparable(expected), actual, tolerance)
    if differences:
        log.error(f"fold {fold} rater {rater}: {len(differences)} difference(s) from {reference}:")
        for line in differences:
            log.error(f"  {line}")
    elif changed and tolerance is not None:
        moved = len(diff_metrics(comparable(expected), actual))
        where = FoldLayout(out).metrics
        log.info(
            f"fold {fold} rater {rater}: within the seed-to-seed spread of {reference} ({moved} moved; {where})"
        )
    else:
        log.info(f"fold {fold} rater {rater}: identical to {reference} ({out / 'metrics.json'})")
    return differences
