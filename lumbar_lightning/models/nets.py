"""The networks: the paper's VGG (10 conv, 4 max-pool, global average pool, 1 FC) and Faster R-CNN builders."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from lumbar_lightning.models.roi_align import VectorisedRoIAlign

#: Convolutions per block and the VGG widths at width=1.0: 2+2+3+3 = 10 conv layers, a max-pool after each block.
VGG_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512))


class CanalVGG(nn.Module):
    """The study's VGG for canal patches; ``width`` scales every layer (1.0 = VGG widths, 0.125 for CPU runs).

    ``channels_last`` keeps weights and activations NHWC: 1.5-1.6x the CPU training throughput at the demo widths
    (oneDNN's NHWC kernels vectorise over channels; `make bench` measures it) and the layout tensor cores want.
    """

    def __init__(
        self,
        num_outputs: int,
        width: float = 1.0,
        in_channels: int = 1,
        batch_norm: bool = True,
        dropout: float = 0.0,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        layers: list[nn.Module] = []
        channels = in_channels
        for n_conv, base in VGG_BLOCKS:
            out = max(4, round(base * width))
            for _ in range(n_conv):
                layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out))
                layers.append(nn.ReLU(inplace=True))
                channels = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


class PlainCNN(nn.Module):
    """The baseline every report sets the pipeline against: four conv-BN-ReLU-pool layers, global average pool, one
    linear layer. Small enough to train in seconds, so a user sees at once whether the study's VGG (and the
    detector in front of it) earns its complexity on their data."""

    def __init__(
        self, num_outputs: int, widths: tuple[int, ...] = (16, 32, 64, 64), in_channels: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out in widths:
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class CompactBackbone(nn.Module):
    """A small single-scale CNN for CPU runs: stride 8, one feature map named '0'."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            stride = 2 if i < 3 else 1
            layers += [
                nn.Conv2d(c, w, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(True),
            ]
            c = w
        self.body = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(x))])


class PresizedTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform for slices that arrive already resized to the detector's square input
    (the data module and ``Pipeline.detect`` resize them once): the resize to the same size and the zero-padded
    copy into a batch are skipped. Both were identities (a bilinear resize at scale 1 reads each pixel with weight
    1, and 32 divides the input size) and the random size draw is still made, so training is the same bit for
    bit; they were 14% of the compact detector's forward time on CPU. Other sizes take torchvision's path."""

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        size = self.min_size[-1]
        fixed = len(self.min_size) == 1 and self.max_size == size and self.fixed_size is None
        if fixed and tuple(image.shape[-2:]) == (size, size):
            if self.training:
                self.torch_choice(self.min_size)  # torchvision's per-image size draw: the RNG stream stays
            return image, target
        return super().resize(image, target)

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) == 1 and all(n % size_divisible == 0 for n in next(iter(shapes))[1:]):
            return torch.stack(images)
        return super().batch_images(images, size_divisible)


def build_faster_rcnn(
    backbone: str = "compact",
    image_size: int = 256,
    anchor_sizes: tuple[int, ...] = (16, 32, 64),
    rpn_pre_nms_top_n: int = 300,
    rpn_post_nms_top_n: int = 100,
    rpn_batch_size_per_image: int = 128,
    box_batch_size_per_image: int = 64,
    box_detections_per_img: int = 5,
    representation_size: int = 1024,
    pretrained: str | None = None,
    roi_sampling_ratio: int = 2,
) -> FasterRCNN:
    """Faster R-CNN with one foreground class (the canal); images are pre-resized to ``image_size``.

    ``pretrained`` is a local state-dict path (never a download); weights whose shapes fit are loaded.
    ``roi_sampling_ratio``: RoIAlign's sampling points per bin side; its backward pass was 17% of the compact
    detector's CPU training time at 2, about a quarter of that at 1 (torchvision's loop; ``VectorisedRoIAlign``
    computes the same gradient bit for bit in about a third of its time).
    """
    if backbone == "resnet50_fpn":
        body = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
        names = ["0", "1", "2", "3"]
    elif backbone == "mobilenet_v3_fpn":
        body = mobilenet_backbone(
            backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=6
        )
        names = ["0", "1"]
    elif backbone == "compact":
        body = CompactBackbone()
        names = ["0"]
    else:
        raise ValueError(
            f"unknown detector backbone {backbone!r}: use resnet50_fpn, mobilenet_v3_fpn or compact"
        )
    if len(names) == 1:
        sizes: tuple[tuple[int, ...], ...] = (tuple(anchor_sizes),)
    else:  # one size per pyramid level; the FPN adds a max-pooled level on top
        sizes = tuple((s,) for s in _spread(anchor_sizes, len(names) + 1))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.7, 1.0, 1.4),) * len(sizes))
    roi_pool = VectorisedRoIAlign(featmap_names=names, output_size=7, sampling_ratio=roi_sampling_ratio)
    head = TwoMLPHead(body.out_channels * 7 * 7, representation_size)
    model = FasterRCNN(
        body,
        num_classes=None,
        min_size=image_size,
        max_size=image_size,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_roi_pool=roi_pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(representation_size, 2),
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=0.0,
    )
    model.transform = PresizedTransform(
        image_size, image_size, model.transform.image_mean, model.transform.image_std
    )
    if pretrained:
        load_matching_weights(model, pretrained)
    return model


def _spread(sizes: tuple[int, ...], n: int) -> list[int]:
    """``n`` anchor sizes from ``sizes`` (doubling past the largest), one per pyramid level."""
    out = list(sizes)[:n]
    while len(out) < n:
        out.append(out[-1] * 2)
    return out


def load_matching_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a local state dict (``weights_only``), keeping only tensors whose names and shapes fit.

    Returns the names that were loaded; refuses a file that fits nothing, so a wrong path cannot pass silently.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise ValueError(f"pretrained weights {path}: no tensor matches this model's names and shapes")
    model.load_state_dict(fitting, strict=False)
    return sorted(fitting)
