"""Read back what an offline W&B run recorded: its ``run-*.wandb`` log (LevelDB-style records of protobufs).

wandb 0.31 has no reader of its own, so this follows the documented log layout: a 7-byte W&B header, then
32 KiB blocks of records, each with a 7-byte header (CRC32C, length, type FULL/FIRST/MIDDLE/LAST).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B log"
    out, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        block_left = BLOCK - (pos % BLOCK)
        if block_left < 7:
            pos += block_left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        body = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            out.append(body)
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            out.append(pending + body)
            pending = b""
        elif kind == 0 and length == 0:
            break
    return out


def read_run(run_dir: Path) -> dict[str, Any]:
    """Run name, group, config, logged history keys/values and summary of one offline run folder."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    run: dict[str, Any] = {"history": [], "summary": {}, "config": {}}
    for raw in records(log):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run["name"], run["group"] = rec.run.display_name, rec.run.run_group
            run["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            run["history"].append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            )
        elif kind == "summary":
            run["summary"].update(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.summary.update}
            )
    return run


def offline_runs(root: Path) -> dict[str, dict[str, Any]]:
    """Every offline run under ``root``, by run name."""
    runs = {}
    for d in sorted(Path(root).rglob("offline-run-*")):
        if d.is_dir():
            r = read_run(d)
            r["dir"] = d
            runs[r["name"]] = r
    return runs
