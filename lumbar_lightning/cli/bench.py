"""``lumbar-bench`` (``make bench``): the speed benchmarks; prints the table, writes ``bench.json``."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lumbar_lightning.cli import CONF_PATH, log


@hydra.main(config_path=CONF_PATH, config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from lumbar_lightning.engine.bench import markdown_block, print_table, run
    from lumbar_lightning.evaluation.record import replace_block
    from lumbar_lightning.io import atomic_write_text

    result = run(small=bool(cfg.small))
    print_table(result)
    atomic_write_text(Path(cfg.out), json.dumps(result, indent=2))
    log.info(f"wrote {cfg.out}")
    if cfg.get("record"):
        replace_block(Path(cfg.record), markdown_block(result))
        log.info(f"recorded in {cfg.record}")


if __name__ == "__main__":
    main()
