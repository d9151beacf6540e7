"""``lumbar-numerics``: what this environment's results depend on (fingerprint) and where two differ (layer hashes)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH


@hydra.main(config_path=CONF_PATH, config_name="numerics", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from lumbar_lightning.engine.layer_hashes import layer_hashes
    from lumbar_lightning.io import atomic_write_text
    from lumbar_lightning.numerics import fingerprint

    with tempfile.TemporaryDirectory() as tmp:
        hashes = layer_hashes(tmp)
    text = json.dumps({"fingerprint": fingerprint(), "layers": hashes}, indent=1)
    atomic_write_text(Path(cfg.out), text)
    print(text)


if __name__ == "__main__":
    main()
