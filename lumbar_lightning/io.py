"""Small file helpers every room may use: writes that a reader (or a resumed run) never sees half done."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file next to ``path``, then rename it over ``path``: a reader (or a run resumed after
    a kill) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = private_tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees half a file."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy then rename: a run killed mid-copy leaves the old file or none, never a truncated one."""
    atomic_write(dst, lambda tmp: shutil.copy2(src, tmp))


def private_tmp(path: Path) -> Path:
    """A temporary name next to ``path`` that no other writer uses: parallel runs (multirun, CV workers) that
    refresh the same cache at once each rename their own file, and the last complete one wins."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
