"""Where two environments part: a short hash of each layer of a tiny training run (``lumbar-numerics``)."""

from __future__ import annotations

import hashlib
import os
from typing import Any


def layer_hashes(work_dir: str | os.PathLike[str]) -> dict[str, str]:
    """A short hash of each layer of a tiny training run, in the order a fold computes them: phantom pixels, the
    ingestion cache, detector input, canal patches, augmentation, initial weights, forward, backward, one Adam
    step, twenty steps, and the detector's loss and gradients. Two environments that agree here train alike;
    the first differing layer says where they part."""
    from pathlib import Path

    import numpy as np
    import pydicom
    import torch

    from lumbar_lightning.data.augment import PaperAugment
    from lumbar_lightning.data.dataset import LumbarDataset
    from lumbar_lightning.data.labels import BOX_COLUMNS
    from lumbar_lightning.data.phantom.cohort import PhantomCohort, PhantomConfig
    from lumbar_lightning.data.transforms import PatchGeometry
    from lumbar_lightning.models.nets import CanalVGG
    from lumbar_lightning.models.predictors import three_channels
    from lumbar_lightning.models.stages import CanalDetector

    def digest(*arrays: Any) -> str:
        h = hashlib.sha256()
        for a in arrays:
            a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:12]

    root = Path(work_dir)
    torch.set_num_threads(1)
    out: dict[str, str] = {}
    PhantomCohort.generate(
        PhantomConfig(n_patients=2, seed=3, image_size=128, pixel_spacing_mm=1.72), root, workers=1
    )
    files = sorted((root / "dicom").rglob("*.dcm"))
    out["phantom_pixels"] = digest(*[pydicom.dcmread(f).pixel_array for f in files])
    dataset = LumbarDataset.ingest(root)
    uids = sorted(dataset.images["sop_instance_uid"])
    out["cache"] = digest(*[dataset.cache.get(u) for u in uids])
    resized = np.stack([dataset.resized(u, 96).astype(np.float32) for u in uids])
    out["detector_input"] = digest(resized)
    labels = dataset.labels.for_rater("A1")
    geometry = PatchGeometry(size=32)
    patches = np.stack(
        [
            dataset.patch(u, tuple(labels.loc[u, list(BOX_COLUMNS)].astype(float)), geometry, 1.35)
            for u in labels.index
        ]
    )
    out["patches"] = digest(patches)
    augment = PaperAugment()
    augmented = np.stack([augment(p, 1000 + i, out_size=32)[0] for i, p in enumerate(patches)])
    out["augmented"] = digest(augmented)
    torch.manual_seed(0)
    net = CanalVGG(4, width=0.125, in_channels=1, batch_norm=True, channels_last=True)
    out["init"] = digest(*net.parameters())
    x, y = torch.from_numpy(augmented[:, None].copy()), torch.arange(len(augmented)) % 4
    logits = net(x)
    out["forward"] = digest(logits)
    torch.nn.functional.cross_entropy(logits, y).backward()
    out["backward"] = digest(*[p.grad for p in net.parameters()])
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    optimizer.step()
    out["adam_step"] = digest(*net.parameters())
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    out["train_20_steps"] = digest(*net.parameters())
    torch.manual_seed(0)
    detector = CanalDetector(image_size=96)
    images = [torch.from_numpy(r)[None] for r in resized[:8]]
    targets = [
        {"boxes": torch.tensor([[30.0, 30.0, 60.0, 60.0]]), "labels": torch.ones(1, dtype=torch.int64)}
        for _ in images
    ]
    loss = sum(detector.net(three_channels(images), targets).values())
    out["detector_loss"] = digest(loss)
    loss.backward()
    out["detector_backward"] = digest(*[p.grad for p in detector.parameters() if p.grad is not None])
    return out
