"""The detector's RoIAlign: torchvision's forward, and a vectorised backward equal to torchvision's bit for bit."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as torchvision_roi_align

from lumbar_lightning.models.roi_align import VectorisedRoIAlign, roi_align


def _case(seed: int) -> tuple[torch.Tensor, torch.Tensor, float, int, bool]:
    """Random feature maps and RoIs, with RoIs past every edge, tiny ones, and integer (corner-exact) ones."""
    g = torch.Generator().manual_seed(seed)
    batch, channels = int(torch.randint(1, 4, (), generator=g)), int(torch.randint(2, 7, (), generator=g))
    height, width = int(torch.randint(2, 22, (), generator=g)), int(torch.randint(2, 22, (), generator=g))
    scale = (1.0, 0.125, 0.5, 0.3)[seed % 4]
    k = int(torch.randint(1, 30, (), generator=g))
    features = torch.randn(batch, channels, height, width, generator=g)
    if seed % 2:
        features = features.to(memory_format=torch.channels_last)  # the compact detector's layout
    corner = torch.rand(k, 2, generator=g) * torch.tensor([width, height]) / scale * 1.3 - 2
    size = torch.rand(k, 2, generator=g) * 30 / (scale * 4) * (0.01 if seed % 7 == 0 else 1.0)
    rois = torch.cat([torch.randint(0, batch, (k, 1), generator=g).float(), corner, corner + size], 1)
    if seed % 5 == 0:
        rois[:, 1:] = rois[:, 1:].round()
    return features.requires_grad_(True), rois, scale, 1 + seed % 3, seed % 3 == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_backward_equals_torchvisions_bit_for_bit(threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    exercised = 0  # cases whose RoIs reach the feature map at all (some lie wholly outside it)
    try:
        for seed in range(120):
            features, rois, scale, ratio, aligned = _case(seed)
            grad = torch.randn(
                len(rois), features.shape[1], 7, 7, generator=torch.Generator().manual_seed(seed)
            )
            theirs = torchvision_roi_align(features, rois, (7, 7), scale, ratio, aligned)
            ours = roi_align(features, rois, scale, (7, 7), ratio, aligned)
            assert torch.equal(ours, theirs), seed
            (expected,) = torch.autograd.grad(theirs, features, grad)
            (got,) = torch.autograd.grad(ours, features, grad)
            assert torch.equal(got, expected), (seed, (got - expected).abs().max().item())
            assert got.stride() == expected.stride(), seed
            exercised += bool(expected.abs().sum() > 0)
    finally:
        torch.set_num_threads(before)
    assert exercised >= 100


def test_the_pooler_matches_torchvisions_and_falls_back_without_grad() -> None:
    features, rois, _, _, _ = _case(3)
    maps = {"0": features}
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(features.shape[0])]
    shapes = [(features.shape[2] * 8, features.shape[3] * 8)] * features.shape[0]
    ours = VectorisedRoIAlign(["0"], output_size=7, sampling_ratio=1)
    theirs = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=1)
    out, ref = ours(maps, boxes, shapes), theirs(maps, boxes, shapes)
    assert torch.equal(out, ref) and ours.scales == theirs.scales == [0.125]
    assert type(out.grad_fn).__name__ == "_RoIAlignBackward"
    (got,) = torch.autograd.grad(out.sum(), features)
    (expected,) = torch.autograd.grad(ref.sum(), features)
    assert torch.equal(got, expected)
    with torch.no_grad():  # inference: torchvision's op alone, no autograd node
        assert ours(maps, boxes, shapes).grad_fn is None
