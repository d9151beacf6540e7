"""Keep freed memory in the process instead of handing it back to the kernel after every training step.

glibc serves each large block (a batch of activations, a gradient) with its own ``mmap`` and unmaps it when freed,
until its adaptive threshold has grown past the block sizes in use. Every training step then page-faults fresh,
zeroed pages: in a fresh CV worker the compact detector's step spent 13 ms of 159 ms in the kernel (8,100 minor
faults a step), 1.6 ms once blocks up to 256 MiB come from the heap and freed memory stays there.

Where blocks come from changes no number (torch aligns every tensor to 64 bytes either way). ``keep_freed_memory()``
runs when ``lumbar_lightning`` is imported, so every entry point and every spawned worker gets it; a
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the environment is the user's choice and left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: Blocks below this come from the heap (glibc's default starts at 128 KiB and adapts up to 32 MiB).
MMAP_THRESHOLD = 256 * 1024 * 1024
#: Free memory at the heap's top is returned to the kernel only beyond this.
TRIM_THRESHOLD = 512 * 1024 * 1024

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); False where it does not apply."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
