"""Pinned numerics: results depend on the locked environment, not on whether the CPU has AVX-512."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lumbar_lightning.numerics import PINNED_ENV, differing_fields, fingerprint

#: What an AVX2-only machine's libraries would pick, forced on this one from outside.
AVX2_MACHINE = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
}


def _has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _layers(tmp_path: Path, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
    out = tmp_path / f"numerics-{len(list(tmp_path.glob('numerics-*.json')))}.json"  # one file per call
    result = subprocess.run(
        [sys.executable, "-m", "lumbar_lightning.cli.numerics", f"out={out}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, **env},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text())


def test_this_process_is_pinned() -> None:
    numerics = fingerprint()["numerics"]
    assert numerics["mode"] == "pinned" and numerics["pinned_late"] == []
    assert numerics["torch_cpu_capability"] == "AVX2"
    assert numerics["mkl_cbwr"] == "COMPATIBLE" and numerics["onednn_max_isa"] == "AVX2"
    assert "X86_V4" not in numerics["numpy_simd"] and "AVX512_ICL" not in numerics["numpy_simd"]


def test_pinned_layers_equal_an_avx2_machines(tmp_path: Path) -> None:
    """Every layer of a tiny training run (phantom pixels to twenty Adam steps and detector gradients) is the same
    pinned as on a machine whose libraries are held to AVX2 from outside: AVX-512 is never used."""
    pinned = _layers(tmp_path)
    capped = _layers(tmp_path, LUMBAR_NUMERICS="native", **AVX2_MACHINE)
    assert pinned["layers"] == capped["layers"]
    assert pinned["fingerprint"]["numerics"]["mode"] == "pinned"
    assert capped["fingerprint"]["numerics"]["mode"] == "native"
    assert differing_fields(pinned["fingerprint"], capped["fingerprint"]) == ["mode"]


@pytest.mark.skipif(not _has_avx512(), reason="needs an AVX-512 CPU to see native numerics differ")
def test_native_numerics_on_avx512_differ_from_the_first_layer(tmp_path: Path) -> None:
    """What pinning fixes: unpinned on AVX-512, numpy's kernels already change the phantom's pixels."""
    pinned, native = _layers(tmp_path)["layers"], _layers(tmp_path, LUMBAR_NUMERICS="native")["layers"]
    assert pinned["phantom_pixels"] != native["phantom_pixels"]
    assert pinned["forward"] != native["forward"]


def test_differing_fields_names_each_part() -> None:
    a = {
        "numerics": {"mode": "pinned", "packages": {"torch": "2.14.1", "numpy": "2.4.6"}, "threads": 1},
        "machine": {"cpu_model": "X"},
    }
    b = {
        "numerics": {"mode": "pinned", "packages": {"torch": "2.14.1", "numpy": "2.5.0"}, "threads": 2},
        "machine": {"cpu_model": "Y"},
    }
    assert differing_fields(a, b) == ["packages/numpy", "threads"]
    assert differing_fields(a, a) == []


def test_an_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from lumbar_lightning.numerics import mode

    monkeypatch.setenv("LUMBAR_NUMERICS", "fastest")
    with pytest.raises(ValueError, match="LUMBAR_NUMERICS"):
        mode()
