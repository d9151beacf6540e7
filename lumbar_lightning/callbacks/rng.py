"""The RNG-state callback that makes a resumed stage draw what an uninterrupted one draws."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RngState(L.Callback):
    """Saves the global RNG states (torch, numpy, python) in every checkpoint and restores them on resume, so a
    stage resumed from ``last.ckpt`` draws what an uninterrupted run draws (Faster R-CNN samples its proposals
    from torch's global RNG). Stored as tensors and plain lists: loadable with ``weights_only=True``."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, state, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "python": [version, list(state), gauss],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, values, gauss = state["python"]
        random.setstate((version, tuple(values), gauss))
