"""Numerics that depend on the locked environment, not on the CPU that runs them.

The same fold trained to different numbers on AVX2 and AVX-512 machines. Hashing each layer
(``lumbar-numerics``) showed where it first diverged: numpy's AVX-512 kernels
(``exp``, ``sin``, ...) change the phantom's pixels, and oneDNN's AVX-512 convolutions change the forward
pass. Every x86-64 machine we run on has AVX2 (with FMA), so each library is held to its AVX2 code path:

- numpy: its AVX-512 dispatch targets are switched off (read once, when numpy is imported);
- torch: ATen's kernels at the AVX2 capability, oneDNN (convolutions) at AVX2 at most;
- MKL (linear layers): the ``COMPATIBLE`` conditional-numerical-reproducibility branch, the one MKL promises
  across vendors (its ``AVX2`` branch is Intel-only: on AMD it falls back to whatever MKL picks);

OpenCV is left alone: its resize and warp gave the same bytes with and without its AVX-512 dispatch (and
switching features off prints a warning on every machine that lacks them).

``pin()`` runs when ``lumbar_lightning`` is imported, before any of these libraries, so every entry point (and
every spawned worker, which imports the package first) computes the same way. ``LUMBAR_NUMERICS=native`` leaves
the environment as it is (the libraries' fastest paths, results depending on the CPU); ``make bench`` reports
what pinning costs.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

#: Environment variable that selects ``pinned`` (default) or ``native`` numerics.
MODE_VARIABLE = "LUMBAR_NUMERICS"

#: What ``pin()`` sets. Each library reads its variable when it first needs it (numpy: at import).
PINNED_ENV = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
}

#: Packages whose versions decide the numbers (the lock file pins them; a run records them).
PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "numpy",
    "opencv-python-headless",
    "pydicom",
    "scipy",
    "scikit-learn",
    "pandas",
    "torchmetrics",
    "albumentations",
)

_state: dict[str, Any] = {"mode": None, "late": []}


def mode() -> str:
    value = os.environ.get(MODE_VARIABLE, "pinned").strip().lower() or "pinned"
    if value not in ("pinned", "native"):
        raise ValueError(f"{MODE_VARIABLE} must be 'pinned' or 'native', got {value!r}")
    return value


def pin() -> str:
    """Apply the pinned environment (unless ``LUMBAR_NUMERICS=native``); returns the mode.

    Libraries already imported read their variable too early to be pinned: they are remembered and reported by
    ``fingerprint()`` (a run that imported numpy before this package is not pinned, and says so).
    """
    current = mode()
    if _state["mode"] is None:
        _state["mode"] = current
        if current == "pinned":
            _state["late"] = [name for name in ("numpy", "torch") if name in sys.modules]
            os.environ.update(PINNED_ENV)
    return current


def _current_mode() -> str:
    """The mode ``pin()`` applied (what the libraries read), else the one the environment asks for."""
    return _state["mode"] or mode()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_numerics() -> dict[str, Any]:
    """What decides numpy's floating-point results (the phantom's pixels): its version and SIMD targets in use."""
    import numpy as np
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return {
        "mode": _current_mode(),
        "numpy": np.__version__,
        "numpy_simd": [t for t in __cpu_dispatch__ if __cpu_features__.get(t)],
    }


def fingerprint() -> dict[str, Any]:
    """The environment a run computed in: what decides its numbers (``numerics``) and what only describes the
    machine (``machine``). ``make reproduce`` demands bit-exact results when the ``numerics`` parts match."""
    import cv2
    import torch

    numerics = {
        "mode": _current_mode(),
        "pinned_late": list(_state["late"]),
        "python": platform.python_version(),
        "packages": {name: v for name in PACKAGES if (v := _version(name)) is not None},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO"),
        "numpy_simd": numpy_numerics()["numpy_simd"],
        "threads": torch.get_num_threads(),
    }
    machine = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "opencv_cpu_features": cv2.getCPUFeaturesLine(),
        "platform": platform.platform(),
        "torch_config": torch.__config__.show().splitlines()[1:4],
    }
    return {"numerics": numerics, "machine": machine}


def differing_fields(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The ``numerics`` fields (``packages/torch``, ``threads``, ...) that differ between two fingerprints."""
    a, b = recorded.get("numerics", {}), current.get("numerics", {})
    out = []
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) or isinstance(b.get(key), dict):
            sub_a, sub_b = a.get(key) or {}, b.get(key) or {}
            out += [f"{key}/{k}" for k in sorted(set(sub_a) | set(sub_b)) if sub_a.get(k) != sub_b.get(k)]
        elif a.get(key) != b.get(key):
            out.append(key)
    return out
