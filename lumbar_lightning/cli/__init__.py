"""The console scripts, one thin Hydra app each: compose the config, call the engine, turn errors into exit codes.

What they share lives here: where the configs live and how contract errors reach the user.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lumbar_lightning.conf import CONF_PATH
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.grading import activate_from

__all__ = ["CONF_PATH", "exit_on_contract_error", "log", "output_dir"]

log = logging.getLogger("lumbar_lightning")


@contextlib.contextmanager
def exit_on_contract_error(cfg: Any = None) -> Iterator[None]:
    """Turn a ``DataContractError`` into one clear sentence on stderr and exit status 2, never a traceback.

    Used inside each app's ``main`` (``with exit_on_contract_error(cfg):``), where Hydra has not yet caught it;
    it first activates the run's grading scheme (``grading=``), the one place every entry point passes through.
    """
    try:
        if cfg is not None:
            activate_from(cfg)
        yield
    except DataContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def output_dir() -> Path:
    """The current Hydra run's output folder."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)
