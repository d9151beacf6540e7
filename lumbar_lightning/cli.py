"""What every Hydra entry point shares: where the configs live and how contract errors reach the user."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lumbar_lightning.data.errors import DataContractError

#: The config tree ships inside the package (``lumbar_lightning/conf``), so a wheel carries it; entry points
#: resolve it as ``pkg://`` and users add their own with ``--config-dir`` or ``hydra.searchpath``.
CONF_PATH = "pkg://lumbar_lightning.conf"
#: The same tree as a folder (Hydra's ``initialize_config_dir`` in tests and tools).
CONF_DIR = str(Path(__file__).resolve().parent / "conf")

log = logging.getLogger("lumbar_lightning")


def exit_on_contract_error(task: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ``DataContractError`` into one clear sentence on stderr and exit status 2, never a traceback."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except DataContractError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def output_dir() -> Path:
    """The current Hydra run's output folder."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)
