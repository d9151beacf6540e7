"""The three LightningModules of the study: ``CanalDetector``, ``RootletClassifier``, ``GradeClassifier``.

They share ``StageModule``: Adam at lr 1e-4 by default, the learning rate halved when ``val/acc`` stops
improving, and a tracked best (``val/acc_best``) that checkpointing and sweeps read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric

from lumbar_lightning.data.labels import LEVEL_CLASSES, grades
from lumbar_lightning.models.metrics import classification_metrics, detection_metrics, detection_outcomes
from lumbar_lightning.models.predictors import CanalBoxPredictor, PatchPredictor, build_kwargs, three_channels

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-4)


def default_scheduler(optimizer: torch.optim.Optimizer) -> Any:
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)


class StageModule(L.LightningModule):
    """Shared optimisation and the best-validation tracking of every stage."""

    #: The validation metric that checkpointing, the LR schedule and sweeps follow.
    monitor = "val/acc"

    def __init__(
        self, optimizer: OptimizerFactory | None = None, scheduler: SchedulerFactory | None = None
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer or default_optimizer
        self.scheduler_factory = scheduler if scheduler is not None else default_scheduler
        self.val_best = MaxMetric()
        self.val_best.persistent(True)  # in checkpoints, so a resumed fit keeps its best so far
        self.train_loss = MeanMetric()
        self._kept: dict[str, list[Any]] | None = None

    def keep_outcomes(self, keep: bool = True) -> None:
        """While on, each validation and test epoch keeps what calibration fits on (``kept_outcomes``; only at
        temperature 1), so that after training the splits are not read a second time."""
        self._kept = {"val": [], "test": []} if keep else None

    def kept_outcomes(self, split: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The last ``split`` epoch's ``outcomes``, kept as ``predict_step`` would give them; None if nothing was
        kept."""
        if self._kept is None or not self._kept[split]:
            return None
        return self.outcomes(self._kept[split])

    def outcomes(self, batches: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """What calibration fits on, from ``predict_step`` outputs on labelled batches: log-probabilities
        (float64) and the class each item truly is."""
        raise NotImplementedError

    def _keeping(self, split: str) -> bool:
        return self._kept is not None and split in self._kept and float(self.temperature) == 1.0

    def _keep(self, split: str, item: Any) -> None:
        if self._keeping(split):
            self._kept[split].append(item)  # type: ignore[index]

    def on_validation_epoch_start(self) -> None:
        if self._kept is not None:
            self._kept["val"] = []

    def on_test_epoch_start(self) -> None:
        if self._kept is not None:
            self._kept["test"] = []

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if not self.scheduler_factory:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.monitor,
                "interval": "epoch",
                "frequency": 1,
            },
        }

    def track_best(self, value: torch.Tensor) -> None:
        self.val_best(value)
        self.log(f"{self.monitor}_best", self.val_best.compute(), prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.train_loss.compute())
        self.train_loss.reset()

    def set_temperature(self, temperature: float) -> None:
        """The temperature fitted on the validation split (saved in the checkpoint with the weights; every stage
        registers a ``temperature`` buffer)."""
        self.temperature.fill_(float(temperature))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a fit resumed from a checkpoint written before calibration existed: uncalibrated
        checkpoint["state_dict"].setdefault("temperature", torch.ones(()))


# --------------------------------------------------------------------------------------------------------------
class CanalDetector(StageModule):
    """Faster R-CNN for the spinal canal box; its ``val/acc`` is the detection rate (top box IoU >= 0.5)."""

    def __init__(
        self,
        backbone: str = "compact",
        image_size: int = 160,
        anchor_sizes: tuple[int, ...] = (8, 16, 32),
        rpn_pre_nms_top_n: int = 100,
        rpn_post_nms_top_n: int = 20,
        rpn_batch_size_per_image: int = 64,
        box_batch_size_per_image: int = 32,
        representation_size: int = 128,
        pretrained: str | None = None,
        channels_last: bool = True,
        roi_sampling_ratio: int = 2,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        built = CanalBoxPredictor.build(**self.hparams)
        self.net = built.net
        self.image_size = image_size
        self.register_buffer(
            "temperature", built.temperature
        )  # of the top box's score, fitted after training
        self.metrics = nn.ModuleDict({s: detection_metrics() for s in ("val", "test")})

    @property
    def predictor(self) -> CanalBoxPredictor:
        """This module's network as the plain-torch detector inference serves (a view: no copy, not a child,
        so the checkpoint's keys stay ``net.*``)."""
        view = CanalBoxPredictor(self.net, self.image_size, self.temperature)
        view.training = self.training
        return view

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.net(three_channels(images))

    def predict_top_box(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The best-scoring box per image (detector-input pixels) and its score; a centred box if none."""
        return self.predictor.top_box(images)

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, torch.Tensor]:
        """The top box per image (detector-input pixels) and its score: what ``Trainer.predict`` returns and
        the pipeline chains on."""
        return self.predictor.predict_step(batch, batch_idx)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        targets = [
            {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64, device=b.device)}
            for b in batch["boxes"]
        ]
        losses = self.net(three_channels(batch["image"]), targets)
        loss = sum(losses.values())
        self.train_loss(loss.detach())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        outputs = self(batch["image"])
        preds = [{k: o[k] for k in ("boxes", "scores", "labels")} for o in outputs]
        targets = [
            {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64, device=b.device)}
            for b in batch["boxes"]
        ]
        self.metrics[split].update(preds, targets)
        if self._keeping(split):  # the top boxes predict_step would give: calibration's inputs
            boxes, scores = self.predictor.top_of(outputs)
            self._keep(split, {"boxes": boxes, "scores": scores, "true_boxes": batch["boxes"]})

    def outcomes(self, batches: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        return detection_outcomes(batches)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, split: str) -> dict[str, float]:
        values = self.metrics[split].compute()  # synced across processes by torchmetrics
        self.metrics[split].reset()
        metrics = {
            f"{split}/map_50": float(values["map_50"]),
            f"{split}/map": float(values["map"]),
            f"{split}/iou": float(values["iou"]),
            f"{split}/acc": float(values["detection_rate"]),
        }
        self.log_dict(metrics, sync_dist=False)
        return metrics

    def on_validation_epoch_end(self) -> None:
        metrics = self._eval_epoch_end("val")
        if not self.trainer.sanity_checking:
            self.track_best(torch.tensor(metrics["val/acc"] + 1e-3 * metrics["val/iou"]))

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")


# --------------------------------------------------------------------------------------------------------------
class PatchClassifier(StageModule):
    """The study's VGG on canal patches; subclasses fix the task's classes and loss."""

    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        width: float = 1.0,
        batch_norm: bool = True,
        dropout: float = 0.0,
        class_prior: list[float] | None = None,
        prior_correction: bool = True,
        channels_last: bool = True,
        flip_tta: bool = False,
        series_reference: bool = False,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        arch: str = "vgg",
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        built = PatchPredictor.build(
            self.class_names, self.num_outputs == 1, **build_kwargs(PatchPredictor.build, self.hparams)
        )
        self.net: nn.Module = built.net
        metrics = classification_metrics(len(self.class_names))
        # ModuleDict keys cannot be "train" (an nn.Module method), hence the suffix.
        self.metrics = nn.ModuleDict(
            {f"{s}_m": metrics.clone(prefix=f"{s}/") for s in ("train", "val", "test")}
        )
        # Under a consensus: the mean share of the raters' votes the prediction gets (``vote_acc``).
        self.vote_agreement = nn.ModuleDict({f"{s}_m": MeanMetric() for s in ("val", "test")})
        # Training-label frequencies, for logit adjustment at inference (balanced sampling trains a uniform prior).
        self.register_buffer("log_prior", built.log_prior)
        self.register_buffer("temperature", built.temperature)  # fitted after training (engine/fold.py)

    def outcomes(self, batches: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        if not batches:
            return np.zeros((0, len(self.class_names))), np.zeros(0, dtype=np.int64)
        log_probs = torch.cat([b["log_probs"] for b in batches]).double().cpu().numpy()
        return log_probs, torch.cat([b["target"] for b in batches]).cpu().numpy()

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def select_by_votes(self) -> None:
        """Under a consensus, checkpointing and the LR schedule follow ``val/vote_acc`` (the mean of the
        agreement with each rater) instead of the agreement with the tie-broken call, which counts a split vote
        as right only when the more severe grade is predicted."""
        self.monitor = "val/vote_acc"

    def set_class_prior(self, counts: np.ndarray) -> None:
        """Record the training split's class frequencies (saved in the checkpoint with the weights)."""
        counts = torch.as_tensor(np.maximum(counts, 1), dtype=torch.float32)
        self.log_prior.copy_(torch.log(counts / counts.sum()).to(self.log_prior.device))
        self.hparams["class_prior"] = [float(c) for c in counts]

    @property
    def predictor(self) -> PatchPredictor:
        """This module's network and prior as the plain-torch classifier inference serves (a view: no copy, not
        a child, so the checkpoint's keys stay ``net.*`` and ``log_prior``).

        ``flip_tta`` reads a patch with its mirror image wherever the trained model is read (test, calibration,
        the pipeline, ``lumbar-predict``), never in the validation that runs inside ``fit``: that validation
        picks the checkpoint and steers the learning rate, so turning the option on leaves training unchanged.
        """
        view = PatchPredictor(
            self.net,
            self.log_prior,
            self.num_outputs == 1,
            self.hparams.prior_correction,
            bool(self.hparams.flip_tta) and not self._fitting(),
            self.hparams.series_reference,
            self.temperature,
            class_names=self.class_names,
        )
        view.training = self.training
        return view

    def _fitting(self) -> bool:
        """Whether a ``Trainer.fit`` is running this module now (its validation included; not once it ended)."""
        trainer = self._trainer
        return trainer is not None and trainer.state.fn == "fit" and trainer.state.status == "running"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (``PatchPredictor.forward``: with ``flip_tta``, averaged with the mirror image in eval mode,
        outside ``fit``)."""
        return self.predictor(x)

    def loss(
        self, logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The task's loss against the class indices ``target``, or against ``soft`` (each class's share of the
        raters' votes) when the labels are a consensus."""
        raise NotImplementedError

    def class_log_probs(self, logits: torch.Tensor, adjust: bool | None = None) -> torch.Tensor:
        """Log-probabilities per class; with ``adjust`` the training prior is added back (logit adjustment)."""
        return self.predictor.class_log_probs(logits, adjust)

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, torch.Tensor]:
        """Class probabilities with the training prior added back where configured (``probs``) and without
        (``probs_balanced``): what ``Trainer.predict`` returns and the pipeline uses (``Pipeline.classify``)."""
        return self.predictor.predict_step(batch, batch_idx)

    def _step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        logits = self(batch["image"])
        target = batch["target"]
        loss = self.loss(logits, target, batch.get("soft_target"))
        log_probs = self.class_log_probs(logits, adjust=False if split == "train" else None)
        self._keep(split, {"log_probs": log_probs.detach().cpu(), "target": target.detach().cpu()})
        preds = log_probs.argmax(-1)
        self.metrics[f"{split}_m"].update(preds, target)
        if split != "train" and batch.get("soft_target") is not None:
            self.vote_agreement[f"{split}_m"].update(batch["soft_target"].gather(1, preds[:, None])[:, 0])
        self.log(f"{split}/loss", loss, prog_bar=split == "train", batch_size=len(target))
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        self.train_loss(loss.detach())
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def confusion_matrix(self, split: str) -> list[list[int]]:
        """The last ``split`` epoch's confusion matrix (rows: label, columns: prediction), read from its registered
        metric: a matrix is not a scalar Lightning can log, and the metric keeps its state until the split's next
        epoch starts."""
        return self.metrics[f"{split}_m"]["confmat"].compute().cpu().tolist()

    def _epoch_end(self, split: str) -> dict[str, torch.Tensor]:
        values = self.metrics[f"{split}_m"].compute()
        scalars = {f"{split}/acc": values[f"{split}/acc"], f"{split}/f1": values[f"{split}/f1"]}
        for name, f1 in zip(self.class_names, values[f"{split}/f1_per_class"], strict=True):
            scalars[f"{split}/f1_{name}"] = f1
        if split != "train" and self.vote_agreement[f"{split}_m"].update_called:  # a consensus split
            scalars[f"{split}/vote_acc"] = self.vote_agreement[f"{split}_m"].compute()
        self.log_dict(scalars, prog_bar=split == "val")
        return scalars

    def on_train_epoch_start(self) -> None:
        self.metrics["train_m"].reset()

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.metrics["val_m"].reset()
        self.vote_agreement["val_m"].reset()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.metrics["test_m"].reset()
        self.vote_agreement["test_m"].reset()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        metrics = self._epoch_end("val")
        if not self.trainer.sanity_checking:
            self.track_best(metrics[self.monitor])

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")


class RootletClassifier(PatchClassifier):
    """Rootlet (cauda equina) or spinal cord level: one logit, binary cross-entropy."""

    class_names = LEVEL_CLASSES

    @property
    def num_outputs(self) -> int:
        return 1

    def loss(
        self, logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None = None
    ) -> torch.Tensor:
        rootlet = target.float() if soft is None else soft[:, 1]
        return F.binary_cross_entropy_with_logits(logits[:, 0], rootlet)


class GradeClassifier(PatchClassifier):
    """Schizas grade A-D: four logits, softmax cross-entropy.

    ``ordinal_weight`` > 0 adds an ordinal term to the loss (not in the paper): the grades are ordered, and a D
    called A costs three times what a D called C does, so probability mass far from the label is pushed back
    first. ``ordinal_loss`` says which term: ``distance``, the expected distance in grades ``sum_k p_k |k - y|``
    (the L1 distance between the predicted and the label's cumulative distributions), or ``rps``, the ranked
    probability score, the same cumulative gap squared. A confidently far prediction costs the same under both;
    but the expected distance is linear in p, so it rewards putting all mass on the likeliest grade however noisy
    the labels (improper), where the RPS, a proper scoring rule, is minimised by the labels' own distribution.
    """

    ORDINAL_LOSSES = ("distance", "rps")

    def __init__(
        self,
        *args: Any,
        ordinal_weight: float = 0.0,
        ordinal_loss: str = "distance",
        classes: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if ordinal_loss not in self.ORDINAL_LOSSES:
            raise ValueError(f"ordinal_loss={ordinal_loss!r}: one of {list(self.ORDINAL_LOSSES)}")
        # the grades in order of severity: the run's scheme (grading=) unless given; saved with the weights
        self.class_names = tuple(classes) if classes else grades()
        super().__init__(*args, **kwargs)
        self.hparams["classes"] = list(self.class_names)
        self.ordinal_weight = float(ordinal_weight)
        self.ordinal_loss = ordinal_loss

    def loss(
        self, logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None = None
    ) -> torch.Tensor:
        loss = F.cross_entropy(logits, target if soft is None else soft)
        if not self.ordinal_weight:
            return loss
        if self.ordinal_loss == "rps":
            label = F.one_hot(target, logits.shape[-1]).to(logits.dtype) if soft is None else soft
            gap = (logits.softmax(-1).cumsum(-1) - label.cumsum(-1))[:, :-1]
            return loss + self.ordinal_weight * gap.square().sum(-1).mean()
        grades = torch.arange(logits.shape[-1], device=logits.device)
        if soft is None:
            distance = (grades[None, :] - target[:, None]).abs().to(logits.dtype)
        else:  # the expected distance under the votes: sum_j q_j |k - j| for each predicted grade k
            distance = soft @ (grades[:, None] - grades[None, :]).abs().to(logits.dtype)
        return loss + self.ordinal_weight * (logits.softmax(-1) * distance).sum(-1).mean()
