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


def _module_names(path: Path) -> list[str]:
    """The modules a package file imports, or a shipped config's ``_target_`` classes (Hydra imports those)."""
    if path.suffix == ".yaml":
        return re.findall(r"^\s*(?:- )?_target_:\s*([A-Za-z_][\w.]*\.\w+)", path.read_text(), re.M)
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def imported_distributions() -> dict[str, set[str]]:
    """distribution -> the package files that import it (imports inside functions included, and the configs'
    ``_target_`` classes)."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    package = ROOT / "lumbar_lightning"
    for path in [*package.rglob("*.py"), *package.rglob("*.yaml")]:
        for name in _module_names(path):
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


def _architecture_rows() -> dict[str, str]:
    """room -> its row of docs/architecture.md's table."""
    rows = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_the_architecture_doc_matches_the_code() -> None:
    """docs/architecture.md names every room and every module in it, and only what exists."""
    package = ROOT / "lumbar_lightning"
    rows = _architecture_rows()
    rooms = {
        p.name + ("/" if p.is_dir() else "")
        for p in package.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")
    }
    assert set(rows) == rooms, f"rooms in the doc {sorted(rows)} vs the package {sorted(rooms)}"
    for room, row in rows.items():
        if not room.endswith("/") or room in ("cli/", "conf/"):  # cli/: one file per console script (below)
            continue
        named = set(re.findall(r"`([\w/]+\.py|\w+/)`", row))
        for name in named:
            assert (package / room / name).exists(), (
                f"docs/architecture.md names {room}{name}, which is not there"
            )
        modules = {p.name for p in (package / room).glob("*.py") if p.name != "__init__.py"}
        modules |= {
            p.name + "/" for p in (package / room).iterdir() if p.is_dir() and (p / "__init__.py").exists()
        }
        assert modules <= named, (
            f"{room} holds {sorted(modules - named)}, which docs/architecture.md does not name"
        )


def test_every_console_script_is_a_thin_cli_app_and_the_bottom_imports_nothing_above() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, func = target.split(":")
        assert (
            module == f"lumbar_lightning.cli.{name.removeprefix('lumbar-').replace('-', '_')}"
            and func == "main"
        )
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), target
    cli_files = {p.stem for p in (ROOT / "lumbar_lightning" / "cli").glob("*.py")} - {"__init__"}
    assert cli_files == {n.removeprefix("lumbar-").replace("-", "_") for n in scripts}
    for bottom in ("layout.py", "numerics.py", "io.py"):
        tree = ast.parse((ROOT / "lumbar_lightning" / bottom).read_text())
        inner = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("lumbar_lightning")
        ]
        assert not inner, f"{bottom} imports the package, so it cannot sit at the bottom"
