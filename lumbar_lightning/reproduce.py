"""``make reproduce FOLD=k``: train one fold again and diff its ``metrics.json`` against a recorded one.

Deterministic CPU training (``trainer.deterministic=true``, a seed, a fixed thread count) gives the same numbers
bit for bit, so any difference is a regression, a changed dependency or a changed config; the exit status is 1
then, with every differing entry listed. Timing fields are the only ones not compared.

``python -m lumbar_lightning.reproduce experiment=demo data.fold=3 data.rater=A1 reference=experiments/demo/reference``
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_DIR, exit_on_contract_error, log, output_dir
from lumbar_lightning.data.dicom import atomic_write_text
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.runner import run_fold

#: Fields that measure the machine, not the result.
TIMING_FIELDS = frozenset({"seconds", "fit_seconds"})


def comparable(tree: Any) -> Any:
    """The metrics without timing fields (what a recorded reference keeps)."""
    if isinstance(tree, dict):
        return {k: comparable(v) for k, v in tree.items() if k not in TIMING_FIELDS}
    if isinstance(tree, list):
        return [comparable(v) for v in tree]
    return tree


def diff_metrics(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Every entry that differs, as ``path: expected -> actual`` (NaN equals NaN; no tolerance)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual), key=str):
            where = f"{path}/{key}" if path else str(key)
            if key not in actual:
                out.append(f"{where}: {expected[key]!r} -> missing")
            elif key not in expected:
                out.append(f"{where}: missing -> {actual[key]!r}")
            else:
                out += diff_metrics(expected[key], actual[key], where)
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            d
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for d in diff_metrics(e, a, f"{path}[{i}]")
        ]
    both_nan = (
        isinstance(expected, float)
        and isinstance(actual, float)
        and math.isnan(expected)
        and math.isnan(actual)
    )
    return [] if expected == actual or both_nan else [f"{path}: {expected!r} -> {actual!r}"]


def reference_file(reference: Path, rater: str, fold: int) -> Path:
    """A metrics JSON itself, or ``<reference>/<rater>/fold_<k>.json`` / ``<rater>/fold_<k>/metrics.json``."""
    candidates = [
        reference,
        reference / rater / f"fold_{fold}.json",
        reference / rater / f"fold_{fold}" / "metrics.json",
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise DataContractError(f"no recorded metrics for rater {rater} fold {fold} under {reference}")


def record_reference(run_dir: Path, reference: Path) -> int:
    """Copy every fold's metrics (timings dropped) from a finished run into ``reference``; returns the count."""
    count = 0
    for metrics in sorted(Path(run_dir).glob("*/fold_*/metrics.json")):
        target = Path(reference) / metrics.parent.parent.name / f"{metrics.parent.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            target, json.dumps(comparable(json.loads(metrics.read_text())), indent=1, sort_keys=True)
        )
        count += 1
    return count


@exit_on_contract_error
def reproduce(cfg: DictConfig) -> list[str]:
    fold, rater = int(cfg.data.fold), str(cfg.data.rater)
    expected = json.loads(reference_file(Path(cfg.reference), rater, fold).read_text())
    out = output_dir() / rater / f"fold_{fold}"
    actual = comparable(run_fold(cfg, fold, rater, out))
    actual = json.loads(json.dumps(actual, default=float))  # as the recorded JSON holds it
    differences = diff_metrics(comparable(expected), actual)
    if differences:
        log.error(f"fold {fold} rater {rater}: {len(differences)} difference(s) from {cfg.reference}:")
        for line in differences:
            log.error(f"  {line}")
    else:
        log.info(f"fold {fold} rater {rater}: identical to {cfg.reference} ({out / 'metrics.json'})")
    return differences


@hydra.main(config_path=CONF_DIR, config_name="reproduce", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if reproduce(cfg):
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--record":
        print(f"recorded {record_reference(Path(sys.argv[2]), Path(sys.argv[3]))} fold(s) into {sys.argv[3]}")
    else:
        main()
