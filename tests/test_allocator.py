"""Freed blocks stay in the process: a training step's buffers do not page-fault fresh memory every time."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

#: Five training steps of the compact detector's backbone on a batch of 16: the minor page faults a step.
PROBE = """
import resource, torch, lumbar_lightning
from lumbar_lightning.models.nets import CompactBackbone
torch.set_num_threads(1)
net, x = CompactBackbone(), torch.randn(16, 3, 160, 160)
def step():
    net(x)["0"].square().mean().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def _faults(**env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env={**clean, **env}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_blocks_are_reused_and_the_users_setting_wins() -> None:
    kept = _faults()
    # the user's own threshold (glibc's starting one, 128 KiB, held fixed) is left alone: each step's activations
    # and gradients are mapped afresh and fault their pages in again (about 36,000 a step here, 1,000-1,300 kept)
    returned = _faults(MALLOC_MMAP_THRESHOLD_="131072")
    assert kept * 10 < returned
