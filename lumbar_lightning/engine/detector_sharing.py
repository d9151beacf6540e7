"""Detector sharing: with consensus boxes one detector per fold serves every rater, so it is trained once."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lumbar_lightning.data.labels import CONSENSUS
from lumbar_lightning.io import atomic_copy
from lumbar_lightning.layout import FoldLayout


def consensus_detector(cfg: DictConfig) -> bool:
    """Whether the detector learns the consensus boxes (``model.detector.boxes: consensus``), so one detector per
    fold serves every rater, or data.rater's own (``rater``)."""
    boxes = cfg.model.detector.get("boxes", "rater")
    if boxes not in ("rater", CONSENSUS):
        raise ValueError(f"model.detector.boxes must be 'rater' or '{CONSENSUS}', got {boxes!r}")
    return boxes == CONSENSUS


def detector_rater(cfg: DictConfig, rater: str) -> str:
    """Whose boxes the detector learns for ``rater``'s fold."""
    return CONSENSUS if consensus_detector(cfg) else rater


def share_detector(cfg: DictConfig, trained: Path, out_dir: Path) -> bool:
    """Give the fold in ``out_dir`` the finished consensus detector of the same fold in ``trained`` (another
    rater's fold folder), so ``run_fold`` reloads it instead of training the same network again. The copy is
    what training would give: the consensus detector depends on neither rater's labels. Returns whether shared."""
    src, dst = FoldLayout(trained), FoldLayout(out_dir)
    # A fit that saves no checkpoint (fast_dev_run) leaves nothing to share: each rater's fold trains its own.
    if not consensus_detector(cfg) or not src.done("detector").exists() or not src.best("detector").exists():
        return False
    if dst.done("detector").exists():
        return True
    dst.stage_dir("detector").mkdir(parents=True, exist_ok=True)
    atomic_copy(src.best("detector"), dst.best("detector"))
    atomic_copy(src.done("detector"), dst.done("detector"))  # last: it marks the stage finished
    return True
