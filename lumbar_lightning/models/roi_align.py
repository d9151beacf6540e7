"""torchvision's RoIAlign with its CPU backward pass vectorised over channels: the same sums, in the same order.

torchvision's CPU backward walks every (RoI, channel, bin, sample) in one scalar loop: 19% of the compact
detector's training step. Here each sample's four bilinear corners are found once for all channels and the
gradient rows are added into a channels-last buffer with ``index_add_``, which on CPU adds rows one after another
in index order. Each input element therefore receives the same terms in the same order as in torchvision's loop
(RoI, bin, sample, corner), each term computed with the same float32 operations: the gradient is equal bit for
bit (tests/test_roi_align.py holds it to torchvision's own kernel). The forward pass is torchvision's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def _backward(
    grad: Tensor,
    rois: Tensor,
    scale: float,
    pooled: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    shape: tuple[int, int, int, int],
) -> Tensor:
    """d(loss)/d(input) of RoIAlign with a fixed ``sampling_ratio`` (> 0): torchvision's terms, in its order."""
    batch, channels, height, width = shape
    ph_n, pw_n = pooled
    s = sampling_ratio
    f32 = torch.float32
    one = torch.tensor(1.0, dtype=f32)
    offset = torch.tensor(0.5 if aligned else 0.0, dtype=f32)
    scale_t = torch.tensor(scale, dtype=f32)
    start_w = rois[:, 1] * scale_t - offset
    start_h = rois[:, 2] * scale_t - offset
    roi_w = rois[:, 3] * scale_t - offset - start_w
    roi_h = rois[:, 4] * scale_t - offset - start_h
    if not aligned:
        roi_w, roi_h = torch.maximum(roi_w, one), torch.maximum(roi_h, one)
    bin_h = roi_h / torch.tensor(float(ph_n), dtype=f32)
    bin_w = roi_w / torch.tensor(float(pw_n), dtype=f32)
    # sample coordinates: start + p * bin + ((i + .5) * bin) / s, in float32 and in that order; [R, P, S]
    bins_h = torch.arange(ph_n, dtype=f32)
    bins_w = torch.arange(pw_n, dtype=f32)
    steps = torch.arange(s, dtype=f32) + 0.5
    s_t = torch.tensor(float(s), dtype=f32)
    y = (start_h[:, None, None] + bins_h[None, :, None] * bin_h[:, None, None]) + (
        steps[None, None, :] * bin_h[:, None, None]
    ) / s_t
    x = (start_w[:, None, None] + bins_w[None, :, None] * bin_w[:, None, None]) + (
        steps[None, None, :] * bin_w[:, None, None]
    ) / s_t
    # every (roi, ph, iy, pw, ix) sample, laid out in torchvision's loop order (roi, ph, pw, iy, ix)
    y = y[:, :, None, :, None].expand(-1, -1, pw_n, -1, s).reshape(-1)
    x = x[:, None, :, None, :].expand(-1, ph_n, -1, s, -1).reshape(-1)
    inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y_low, x_low = y.to(torch.int64), x.to(torch.int64)
    y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
    y_low = torch.where(y_edge, height - 1, y_low)
    x_low = torch.where(x_edge, width - 1, x_low)
    y = torch.where(y_edge, y_low.to(f32), y)
    x = torch.where(x_edge, x_low.to(f32), x)
    y_high = torch.where(y_edge, y_low, y_low + 1)
    x_high = torch.where(x_edge, x_low, x_low + 1)
    ly, lx = y - y_low.to(f32), x - x_low.to(f32)
    hy = (1.0 - ly.double()).to(f32)  # `1. - ly` in C++: a double subtraction, stored as float
    hx = (1.0 - lx.double()).to(f32)
    weights = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=1)  # [samples, 4]
    base = rois[:, 0].to(torch.int64).repeat_interleave(ph_n * pw_n * s * s) * (height * width)
    corners = (
        torch.stack(
            [y_low * width + x_low, y_low * width + x_high, y_high * width + x_low, y_high * width + x_high],
            dim=1,
        )
        + base[:, None]
    )
    keep = inside.nonzero().squeeze(1)
    # each kept sample's gradient row (all channels): grad[roi, :, ph, pw] of its bin
    rows = grad.permute(0, 2, 3, 1).reshape(-1, channels)
    bin_of = torch.arange(rows.shape[0]).repeat_interleave(s * s)[keep]
    terms = rows[bin_of][:, None, :] * weights[keep][:, :, None]  # (g * w) / count: [kept, 4, C]
    if s > 1:  # (x / 1 is x: skipped)
        terms = terms / torch.tensor(float(s * s), dtype=f32)
    out = torch.zeros(batch * height * width, channels, dtype=grad.dtype)
    out.index_add_(0, corners[keep].reshape(-1), terms.reshape(-1, channels))
    return out.view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        features: Tensor,
        rois: Tensor,
        scale: float,
        pooled: tuple[int, int],
        sampling_ratio: int,
        aligned: bool,
    ) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.args = (scale, pooled, sampling_ratio, aligned, tuple(features.shape))
        return torch.ops.torchvision.roi_align(features, rois, scale, *pooled, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        return _backward(grad, rois, *ctx.args), None, None, None, None, None


def roi_align(
    features: Tensor,
    rois: Tensor,
    scale: float,
    pooled: tuple[int, int],
    sampling_ratio: int,
    aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align`` on ``[K, 5]`` RoIs; the vectorised backward on float32 CPU tensors with a
    fixed sampling ratio, torchvision's own everywhere else."""
    fast = features.device.type == "cpu" and features.dtype == torch.float32 and sampling_ratio > 0
    if fast and torch.is_grad_enabled() and features.requires_grad:
        return _RoIAlign.apply(features, rois, scale, pooled, sampling_ratio, aligned)
    return torch.ops.torchvision.roi_align(features, rois, scale, *pooled, sampling_ratio, aligned)


class VectorisedRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` whose single-level pooling uses ``roi_align`` above (several levels: torchvision's)."""

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if len(features) != 1:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        pooled = (int(self.output_size[0]), int(self.output_size[1]))
        return roi_align(
            features[0], _convert_to_roi_format(boxes), self.scales[0], pooled, self.sampling_ratio
        )
