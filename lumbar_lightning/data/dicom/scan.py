"""DICOM ingestion: scan a folder tree, index every image, decode pixels once into the cache.

Training reads only the cache (``ImageCache``); DICOM is decoded once per file version. A file that is not a
readable image is never fatal: it lands in ``skipped`` with the reason, as the data contract requires.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_module
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar_lightning.data.dicom.cache import ImageCache
from lumbar_lightning.data.dicom.headers import INDEX_COLUMNS
from lumbar_lightning.data.dicom.pixels import normalise, read_images
from lumbar_lightning.data.errors import DataContractError


@dataclass
class SkippedFile:
    """A file that ingestion did not take, and why."""

    path: str
    reason: str

    def as_dict(self, relative_to: Path | None = None) -> dict[str, str]:
        """For reports: the path relative to the data folder where given (no machine-specific prefix)."""
        path = self.path
        if relative_to is not None and Path(self.path).is_relative_to(relative_to):
            path = str(Path(self.path).relative_to(relative_to))
        return {"path": path, "reason": self.reason}


def iter_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` sorted by path, never following directory links (so no link loops)."""
    found = [
        Path(dirpath) / name
        for dirpath, _, filenames in os.walk(root, followlinks=False)
        for name in filenames
        if not name.startswith(".")
    ]
    yield from sorted(found, key=str)


def _stat_key(path: Path) -> tuple[int, int] | str:
    """(size, mtime) of a regular file, else why it cannot be read."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot be read ({exc.strerror or 'broken link or vanished file'})"
    if not stat_module.S_ISREG(st.st_mode):
        return "not a regular file (device, pipe or socket)"
    return st.st_size, st.st_mtime_ns


def _manifest_key(path: Path) -> str:
    # Hashed, so the cache holds no file names (exports often name folders after the patient).
    return hashlib.sha1(str(path).encode()).hexdigest()


#: What the cache manifest keeps of a record: no identifier, no path.
_PRIVATE_FIELDS = ("patient_id", "path")


@dataclass
class DicomIndex:
    """The result of a scan: one row per usable image, and the files that were skipped with their reasons."""

    images: pd.DataFrame
    skipped: list[SkippedFile]
    decoded: int = 0
    from_cache: int = 0


def _read_for_cache(
    path: Path, salt: str
) -> tuple[list[tuple[dict[str, Any], np.ndarray]] | None, str | None]:
    """``read_images`` with each image's pixel digest added and its pixels normalised for the cache, or the reason
    the file is unusable: the per-file work of ingestion, which ``read_many`` spreads over processes."""
    try:
        images = read_images(path, salt)
    except ValueError as exc:
        return None, str(exc)
    out = []
    for record, pixels in images:
        record["pixel_sha1"] = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        out.append((record, normalise(pixels)))
    return out, None


def read_many(
    paths: list[Path], salt: str, workers: int | None = None, window: int = 256
) -> Iterator[tuple[list[tuple[dict[str, Any], np.ndarray]] | None, str | None]]:
    """``_read_for_cache`` of each path, in order. With many files, ``workers`` processes (default: the CPU
    count, at most 8) decode them, at most ``window`` files ahead of the consumer so memory stays bounded;
    decoding is ~95% of a first ingestion. The results are the same either way."""
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    if workers <= 1 or len(paths) < 64:
        yield from (_read_for_cache(p, salt) for p in paths)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # fork where there is one: a spawned child re-imports the caller's main module (torch and Lightning for the
    # entry points, ~6 s each), which cost more than it saved. The children only run pydicom and numpy, never
    # the caller's thread pools, as the phantom generator's workers do.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        pending: deque = deque()
        todo = iter(paths)
        for path in todo:
            pending.append(pool.submit(_read_for_cache, path, salt))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_read_for_cache, nxt, salt))
            yield result


def scan_dicom(
    dicom_dir: Path, cache: ImageCache, salt: str = "lumbar-lightning", workers: int | None = None
) -> DicomIndex:
    """Index and cache every image below ``dicom_dir``; reuse cache entries whose source file is unchanged.
    Files to decode are read by ``workers`` processes (``read_many``).

    Identical copies of a SOPInstanceUID: the first (in path order) wins. Copies with different pixels: every
    copy is skipped, since which one a label means cannot be known.
    """
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise DataContractError(
            f"{dicom_dir} is not a folder: a data set needs its images under <dataset>/dicom"
        )
    old = cache.load_manifest()
    salt_id = hashlib.sha256(f"salt\x00{salt}".encode()).hexdigest()[:16]
    new: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    skipped: list[SkippedFile] = []
    seen: dict[str, tuple[str, str]] = {}  # image key -> (first path, pixel digest)
    conflicting: dict[str, list[str]] = {}
    decoded = from_cache = 0
    plan: list[tuple[Path, str, tuple[int, int] | str, dict[str, Any] | None]] = []
    for path in iter_files(dicom_dir):
        key = _manifest_key(path.resolve() if not path.is_symlink() else path)
        stat = _stat_key(path)
        entry = old.get(key)
        cached_ok = (
            not isinstance(stat, str)
            and entry is not None
            and (entry.get("file_size"), entry.get("file_mtime_ns")) == stat
            and entry.get("salt") == salt_id
            and ("reason" in entry or all(cache.has(r["sop_instance_uid"]) for r in entry["records"]))
        )
        plan.append((path, key, stat, entry if cached_ok else None))
    to_decode = [path for path, _, stat, entry in plan if entry is None and not isinstance(stat, str)]
    reads = read_many(to_decode, salt, workers)
    for path, key, stat, entry in plan:
        if isinstance(stat, str):
            skipped.append(SkippedFile(str(path), stat))
            continue
        if entry is not None:
            from_cache += 1
            new[key] = entry
            records = [dict(r, path=str(path)) for r in entry.get("records", [])]
        else:
            decoded += 1
            images, reason = next(reads)
            if images is None:
                new[key] = {
                    "file_size": stat[0],
                    "file_mtime_ns": stat[1],
                    "salt": salt_id,
                    "reason": reason,
                }
                records = []
            else:
                records = []
                for record, normalised in images:
                    if record["sop_instance_uid"] not in seen:
                        cache.put(record["sop_instance_uid"], normalised)
                    records.append(record)
                stored = [{k: v for k, v in r.items() if k not in _PRIVATE_FIELDS} for r in records]
                new[key] = {
                    "file_size": stat[0],
                    "file_mtime_ns": stat[1],
                    "salt": salt_id,
                    "records": stored,
                }
        if "reason" in new[key]:
            skipped.append(SkippedFile(str(path), new[key]["reason"]))
            continue
        for record in records:
            uid = record["sop_instance_uid"]
            if uid in seen:
                first, digest = seen[uid]
                if digest == record["pixel_sha1"]:
                    reason = f"duplicate SOPInstanceUID {uid} (identical copy of {first})"
                else:
                    conflicting.setdefault(uid, [first]).append(str(path))
                    reason = f"duplicate SOPInstanceUID {uid} with different pixels from {first}: all copies skipped"
                skipped.append(SkippedFile(str(path), reason))
                continue
            seen[uid] = (str(path), record["pixel_sha1"])
            rows.append(record)
    for uid, paths in conflicting.items():
        skipped.append(
            SkippedFile(
                paths[0],
                f"SOPInstanceUID {uid} has {len(paths)} copies with different pixels: all copies skipped",
            )
        )
    rows = [r for r in rows if r["sop_instance_uid"] not in conflicting]
    cache.save_manifest(new)
    images = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    return DicomIndex(images=images, skipped=skipped, decoded=decoded, from_cache=from_cache)
