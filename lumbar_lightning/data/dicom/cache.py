"""The decoded-image cache: DICOM is decoded once per file version; training reads only this."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lumbar_lightning.io import atomic_write_text, private_tmp


@dataclass
class ImageCache:
    """Normalised float16 images keyed by SOPInstanceUID, plus a manifest that ties each to its source file.

    An entry is valid while its source file keeps the same path, size and modification time; anything else
    makes ingestion decode the file again.
    """

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "images").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(sop_instance_uid: str) -> str:
        return hashlib.sha1(sop_instance_uid.encode()).hexdigest()

    def image_path(self, sop_instance_uid: str) -> Path:
        return self.root / "images" / f"{self.key(sop_instance_uid)}.npy"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def load_manifest(self) -> dict[str, dict[str, Any]]:
        """Path -> cached header record (or skip reason) of the last ingestion."""
        if not self.manifest_path.exists():
            return {}
        try:
            return json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, OSError):
            return {}

    def save_manifest(self, manifest: dict[str, dict[str, Any]]) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest))

    def put(self, sop_instance_uid: str, image: np.ndarray) -> None:
        target = self.image_path(sop_instance_uid)
        tmp = private_tmp(target)
        try:
            np.save(tmp, image.astype(np.float16, copy=False))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def has(self, sop_instance_uid: str) -> bool:
        return self.image_path(sop_instance_uid).exists()

    def get(self, sop_instance_uid: str) -> np.ndarray:
        """The cached image as float32 in [0, 1]."""
        return np.load(self.image_path(sop_instance_uid)).astype(np.float32)
