"""The run folder's layout, in one place: whoever writes or reads a run asks here for its paths.

A run (``lumbar-cv``, ``lumbar-train``, ``lumbar-evaluate``) holds ``<rater>/fold_<k>/`` per trained fold, each
with ``checkpoints/<stage>/{best,last}.ckpt`` and ``done.json``, ``pipeline.json``, ``config.yaml``,
``folds.csv``, ``predictions.csv`` and ``metrics.json``; the run itself holds ``cv_summary.json``, ``report.md``,
``figures/``, ``timing.json``, ``logs/`` (W&B) and, under ``seeds=[...]``, one run per seed in ``seed_<s>/``.
This module imports nothing of the package, so every room may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FOLD_PREFIX = "fold_"


@dataclass(frozen=True)
class FoldLayout:
    """One trained fold's folder (``<run>/<rater>/fold_<k>``, or any folder ``lumbar-predict`` is pointed at)."""

    dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def rater(self) -> str:
        return self.dir.parent.name

    @property
    def fold(self) -> int | str:
        """The fold number (``external`` for an external validation's single pass)."""
        key = self.dir.name.removeprefix(FOLD_PREFIX)
        return int(key) if key.isdigit() else key

    def stage_dir(self, stage: str) -> Path:
        return self.dir / "checkpoints" / stage

    def best(self, stage: str) -> Path:
        return self.stage_dir(stage) / "best.ckpt"

    def last(self, stage: str) -> Path:
        return self.stage_dir(stage) / "last.ckpt"

    def done(self, stage: str) -> Path:
        """Written last when a stage finishes: its presence means the stage need not train again."""
        return self.stage_dir(stage) / "done.json"

    def profiles(self, stage: str) -> Path:
        return self.dir / "profiles" / stage

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def pipeline(self) -> Path:
        return self.dir / "pipeline.json"

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def folds(self) -> Path:
        return self.dir / "folds.csv"

    @property
    def predictions(self) -> Path:
        return self.dir / "predictions.csv"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"


@dataclass(frozen=True)
class RunLayout:
    """One run folder: its folds per rater and its run-level outputs."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def fold(self, rater: str, fold: int | str) -> FoldLayout:
        return FoldLayout(self.root / rater / f"{FOLD_PREFIX}{fold}")

    def folds(self, rater: str = "*", having: str | None = None) -> list[FoldLayout]:
        """The fold folders of ``rater`` (every rater by default) in path order (``fold_10`` before ``fold_2``:
        the order every recorded table was computed in); ``having``: only those whose file of that name exists
        (``"metrics"``: finished, ``"pipeline"``: trained, ``"predictions"``: tested)."""
        found = [FoldLayout(p) for p in sorted(self.root.glob(f"{rater}/{FOLD_PREFIX}*")) if p.is_dir()]
        return [f for f in found if having is None or getattr(f, having).is_file()]

    def seed(self, seed: int) -> RunLayout:
        return RunLayout(self.root / f"seed_{seed}")

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def confusion_figure(self, task: str) -> Path:
        """The confusion matrices of every pair of one task (``rootlet`` or ``grade``)."""
        return self.figures / f"confusion_{task}.png"

    @property
    def worst_cases(self) -> Path:
        return self.figures / "worst_cases.png"

    @property
    def reliability_figure(self) -> Path:
        return self.figures / "reliability.png"

    @property
    def referral_figure(self) -> Path:
        return self.figures / "referral.png"

    @property
    def summary(self) -> Path:
        return self.root / "cv_summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def timing(self) -> Path:
        return self.root / "timing.json"

    @property
    def seeds_summary(self) -> Path:
        """Under ``seeds=[...]``: every pair as mean and spread over the seeds' runs (``seed_<s>/``)."""
        return self.root / "seeds_summary.json"

    @property
    def seeds_report(self) -> Path:
        return self.root / "seeds_report.md"

    @property
    def objective(self) -> Path:
        """What ``lumbar-train`` returned to a sweeper (one per sweep job)."""
        return self.root / "objective.json"

    @property
    def hydra_config(self) -> Path:
        """The composed config Hydra saved for the run."""
        return self.root / ".hydra" / "config.yaml"

    @property
    def trained_config(self) -> Path:
        """The composed config the run's folds trained with: the first fold's ``config.yaml`` (one seed's folder of a
        ``seeds=[...]`` run has no Hydra config of its own), else Hydra's."""
        saved = self.folds(having="config")
        return saved[0].config if saved else self.hydra_config

    @property
    def hydra_overrides(self) -> Path:
        """The command-line overrides Hydra saved for the run."""
        return self.root / ".hydra" / "overrides.yaml"
