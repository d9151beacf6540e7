"""The console scripts, one thin Hydra app each: compose the config, call the engine, turn errors into exit codes.

What they share lives here: where the configs live and how contract errors reach the user.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from lumbar_lightning.conf import CONF_PATH
from lumbar_lightning.data.errors import DataContractError

__all__ = ["CONF_PATH", "exit_on_contract_error", "log", "output_dir"]

log = logging.getLogger("lumbar_lightning")


@contextlib.contextmanager
def exit_on_contract_error() -> Iterator[None]:
    """Turn a ``DataContractError`` into one clear sentence on stderr and exit status 2, never a traceback.

    Used inside each app's ``main`` (``with exit_on_contract_error():``), where Hydra has not yet caught it.
    """
    try:
        yield
    except DataContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def output_dir() -> Path:
    """The current Hydra run's output folder."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)
