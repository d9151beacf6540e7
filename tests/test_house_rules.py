"""House rules a reviewer should not have to check by eye: declared dependencies match what the package imports
(nothing used and undeclared, nothing declared and unused), and the formatter owns the layout."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Declared for what they do at run time without being imported by name, each with its reason.
LOADED_NOT_IMPORTED = {
    "pycocotools": "torchmetrics' MeanAveragePrecision backend",
    "pylibjpeg": "pydicom's decoder plugin for compressed transfer syntaxes",
    "pylibjpeg-libjpeg": "pydicom's decoder plugin (JPEG)",
    "pylibjpeg-openjpeg": "pydicom's decoder plugin (JPEG 2000)",
    "pylibjpeg-rle": "pydicom's decoder plugin (RLE)",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normalise(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in project["dependencies"]}


def imported_distributions() -> dict[str, set[str]]:
    """distribution -> the package files that import it (imports inside functions included)."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (ROOT / "lumbar_lightning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "lumbar_lightning" or top in sys.stdlib_module_names:
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(_normalise(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_distribution_is_declared() -> None:
    undeclared = {d: sorted(f) for d, f in imported_distributions().items() if d not in declared()}
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"


def test_every_declared_dependency_is_used() -> None:
    unused = declared() - set(imported_distributions()) - set(LOADED_NOT_IMPORTED)
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}"


def test_the_formatter_owns_the_layout() -> None:
    """No ``# fmt: skip`` / ``# fmt: off`` without a reason written after it on the same line."""
    bare = re.compile(r"#\s*fmt:\s*(skip|off)\s*$")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("lumbar_lightning", "tests", "tools")
        for path in (ROOT / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert not found, f"formatter switched off without a reason: {found}"
