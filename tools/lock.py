"""Write requirements.lock: every package `pip install -e .[dev,sweep]` resolves to, with its exact version and
the sha256 of the file pip chose. `make lock` runs it; `make install` installs exactly this list.

Usage: python tools/lock.py PIP_REPORT.json requirements.lock   (PIP_REPORT from `pip install --dry-run --report`)
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def lock_lines(report: dict) -> list[str]:
    lines = []
    for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name == "lumbar-lightning":  # the project itself is installed from the checkout
            continue
        archive = item["download_info"].get("archive_info", {})
        hashes = archive.get("hashes") or {}
        if "sha256" not in hashes:
            raise SystemExit(
                f"{name}=={version}: pip reported no sha256 for {item['download_info'].get('url')}"
            )
        lines.append(f"{name}=={version} --hash=sha256:{hashes['sha256']}")
    return lines


def main() -> None:
    report_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    lines = lock_lines(json.loads(report_path.read_text()))
    header = [
        "# Exact versions and hashes of everything `pip install -e .[dev,sweep]` needs; `make install` installs",
        "# these alone (pip --require-hashes). Regenerate with `make lock` after changing pyproject.toml.",
        f"# Resolved for CPython {platform.python_version()} on {platform.system()} {platform.machine()}.",
    ]
    out_path.write_text("\n".join(header + lines) + "\n")
    print(f"{out_path}: {len(lines)} packages")


if __name__ == "__main__":
    main()
