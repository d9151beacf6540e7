"""Detector sharing: with consensus boxes one detector per fold serves every rater, so it is trained once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

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


#: The one fold's detections kept in this process: (detector digest, settings) and the memo itself.
_DETECTIONS: dict[tuple[str, str], dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]]] = {}


def shared_detections(
    cfg: DictConfig, checkpoint: Path
) -> dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] | None:
    """The memo of a fold's test-set detections (``predict_test_images``'s ``detections``) that the fold's raters
    share when they run one after the other in a process (``lumbar-cv``'s jobs): with a consensus detector the
    second rater's pipeline would detect the same images with the same network again. Keyed by the checkpoint's
    bytes (its calibrated temperature included), the box choice and the batch size, so a different detector
    never reads another's boxes; only the latest fold's memo is kept. None: nothing to share."""
    if not consensus_detector(cfg) or not checkpoint.exists():
        return None
    settings = OmegaConf.to_yaml(
        {"box_choice": cfg.model.detector.get("box_choice"), "batch": cfg.data.eval_batch_size}
    )
    key = (hashlib.sha256(checkpoint.read_bytes()).hexdigest(), settings)
    if key not in _DETECTIONS:
        _DETECTIONS.clear()
        _DETECTIONS[key] = {}
    return _DETECTIONS[key]
