"""Each stage's network and how it answers, as plain ``nn.Module``s: what inference runs, without Lightning.

``lumbar-predict`` starts in a fresh process for one study; importing Lightning (and torchmetrics) cost it about
2 s before any work. The LightningModules in ``stages.py`` build their networks here and answer through a
``predictor`` view of themselves, so training, ``Trainer.predict`` and inference run one code path.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lumbar_lightning.models.nets import CanalVGG, PlainCNN, build_faster_rcnn


def three_channels(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Grey slices as the three channels torchvision's detection transform expects (a view, no copy)."""
    return [im.expand(3, -1, -1) for im in images]


def build_kwargs(builder: Any, hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a ``build`` takes (a checkpoint also holds training-only ones, e.g. the loss's)."""
    accepted = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return dict(hparams)  # the builder passes them on and filters there
    return {k: v for k, v in hparams.items() if k in accepted}


class CanalBoxPredictor(nn.Module):
    """Faster R-CNN and the square size its input is resized to; answers with each image's top box.

    ``temperature``: the top box's score is taken as P(the canal is found) and rescaled on its logit, fitted on a
    fold's validation split after training (1 until then); the box itself never moves.
    """

    def __init__(self, net: nn.Module, image_size: int, temperature: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net
        self.image_size = int(image_size)
        self.register_buffer("temperature", torch.ones(()) if temperature is None else temperature)

    @classmethod
    def build(cls, image_size: int, channels_last: bool = True, **faster_rcnn: Any) -> CanalBoxPredictor:
        """A fresh detector from ``CanalDetector``'s hyperparameters (its defaults are the config's; a checkpoint
        holds them all): ``faster_rcnn`` are ``build_faster_rcnn``'s keywords, ``pretrained`` a local path."""
        net = build_faster_rcnn(
            image_size=image_size, box_detections_per_img=5, **build_kwargs(build_faster_rcnn, faster_rcnn)
        )
        if channels_last:  # NHWC convolutions: ~10% faster on CPU for the compact backbone (see CanalVGG)
            net.to(memory_format=torch.channels_last)
        return cls(net, image_size)

    def forward(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.net(three_channels(images))

    @torch.no_grad()
    def candidates(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Every box the detector keeps per image (detector-input pixels) with its raw score, in eval mode."""
        was_training = self.net.training
        self.net.eval()
        outputs = self(images)
        self.net.train(was_training)
        return [{"boxes": out["boxes"], "scores": out["scores"]} for out in outputs]

    def centred_box(self) -> torch.Tensor:
        """What a slice without any candidate gets: a box in the middle of the image, scored 0."""
        s = float(self.image_size)
        return torch.tensor([0.4 * s, 0.4 * s, 0.6 * s, 0.6 * s])

    def calibrated(self, scores: torch.Tensor) -> torch.Tensor:
        """Raw box scores as P(canal found), through the fitted temperature (skipped at 1: bit for bit)."""
        if float(self.temperature) != 1.0:
            return torch.sigmoid(torch.logit(scores, eps=1e-6) / self.temperature)
        return scores

    @torch.no_grad()
    def top_box(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The best-scoring box per image (detector-input pixels) and its score; a centred box if none."""
        return self.top_of(self.candidates(images))

    def top_of(self, candidates: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``top_box`` of candidates already detected (eval-mode outputs, e.g. a test step's)."""
        boxes, scores = [], []
        for out in candidates:
            if len(out["boxes"]):
                i = int(torch.argmax(out["scores"]))
                boxes.append(out["boxes"][i])
                scores.append(out["scores"][i])
            else:
                boxes.append(self.centred_box())
                scores.append(torch.tensor(0.0))
        return torch.stack(boxes), self.calibrated(torch.stack(scores))

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        boxes, scores = self.top_box(batch["image"])
        out: dict[str, Any] = {"boxes": boxes, "scores": scores}
        if "boxes" in batch:  # a labelled batch: what calibration fits against
            out["true_boxes"] = batch["boxes"]
        return out


def patch_network(
    num_outputs: int,
    arch: str = "vgg",
    width: float = 1.0,
    in_channels: int = 1,
    batch_norm: bool = True,
    dropout: float = 0.0,
    channels_last: bool = True,
) -> nn.Module:
    """The study's VGG (``arch=vgg``) or the baseline's plain CNN (``arch=plain``, ``model/grade=baseline``)."""
    if arch == "vgg":
        return CanalVGG(
            num_outputs,
            width=width,
            in_channels=in_channels,
            batch_norm=batch_norm,
            dropout=dropout,
            channels_last=channels_last,
        )
    if arch == "plain":
        return PlainCNN(
            num_outputs,
            widths=tuple(max(4, round(w * width)) for w in (16, 32, 64, 64)),
            in_channels=in_channels,
        )
    raise ValueError(f"arch must be 'vgg' or 'plain', got {arch!r}")


class PatchPredictor(nn.Module):
    """A patch classifier's network, its training prior and how it answers: class probabilities.

    ``binary``: one logit (rootlet vs cord, class 1 at positive logits); else one logit per class.
    ``prior_correction``: add the training split's log prior back at inference (balanced sampling trains a
    uniform prior). ``flip_tta``: in eval mode, the mean logits of the patch and its mirror image (the
    LightningModule turns it off inside ``fit``).
    ``temperature``: the final log-probabilities are divided by it (temperature scaling, fitted on a fold's
    validation split after training; 1 until then). It never changes which class wins.
    """

    def __init__(
        self,
        net: nn.Module,
        log_prior: torch.Tensor,
        binary: bool,
        prior_correction: bool = True,
        flip_tta: bool = False,
        series_reference: bool = False,
        temperature: torch.Tensor | None = None,
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.net = net
        self.class_names = tuple(class_names)  # what each output means (the grader's: the grading scheme's)
        self.register_buffer("log_prior", log_prior)
        self.register_buffer("temperature", torch.ones(()) if temperature is None else temperature)
        self.binary = binary
        self.prior_correction = prior_correction
        self.flip_tta = flip_tta
        self.series_reference = series_reference  # a second input channel: the series' reference slice

    @classmethod
    def build(
        cls,
        class_names: Sequence[str],
        binary: bool = False,
        width: float = 1.0,
        batch_norm: bool = True,
        dropout: float = 0.0,
        class_prior: Sequence[float] | None = None,
        prior_correction: bool = True,
        channels_last: bool = True,
        flip_tta: bool = False,
        series_reference: bool = False,
        arch: str = "vgg",
    ) -> PatchPredictor:
        """A fresh classifier (``PatchClassifier``'s hyperparameters; the prior uniform unless given)."""
        net = patch_network(
            1 if binary else len(class_names),
            arch,
            width,
            in_channels=2 if series_reference else 1,
            batch_norm=batch_norm,
            dropout=dropout,
            channels_last=channels_last,
        )
        prior = torch.tensor(
            list(class_prior) if class_prior else [1.0] * len(class_names), dtype=torch.float32
        )
        log_prior = torch.log(prior / prior.sum())
        return cls(
            net, log_prior, binary, prior_correction, flip_tta, series_reference, class_names=class_names
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; in eval mode with ``flip_tta`` the mean over the patch and its mirror image.

        Left and right are symmetric for both tasks (training flips at random), so averaging the two reads halves
        the variance that comes from where exactly the rootlets happen to lie.
        """
        logits = self.net(x)
        if self.flip_tta and not self.training:
            logits = 0.5 * (logits + self.net(torch.flip(x, dims=[-1])))
        return logits

    def logits_to_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return torch.stack([F.logsigmoid(-logits[:, 0]), F.logsigmoid(logits[:, 0])], dim=-1)
        return torch.log_softmax(logits, dim=-1)

    def class_log_probs(self, logits: torch.Tensor, adjust: bool | None = None) -> torch.Tensor:
        """Log-probabilities per class; with ``adjust`` the training prior is added back (logit adjustment); then
        the temperature, where one was fitted."""
        adjust = self.prior_correction if adjust is None else adjust
        logp = self.logits_to_log_probs(logits)
        if adjust:
            logp = torch.log_softmax(logp + self.log_prior, dim=-1)
        if float(self.temperature) != 1.0:  # skipped at 1: renormalising would move the last bits
            logp = torch.log_softmax(logp / self.temperature, dim=-1)
        return logp

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, torch.Tensor]:
        """Class probabilities with the training prior added back where configured (``probs``) and without
        (``probs_balanced``)."""
        logits = self(batch["image"])
        log_probs = self.class_log_probs(logits)
        out = {
            "probs": log_probs.exp(),
            "probs_balanced": self.class_log_probs(logits, adjust=False).exp(),
            "log_probs": log_probs,
        }
        if "target" in batch:  # a labelled batch: what calibration fits against
            out["target"] = batch["target"]
        return out
