"""The three LightningModules learn, report their metrics, and the Pipeline chains them correctly."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from torch import nn

from lumbar_lightning.data.datamodules import PatchDataModule, SliceDataModule
from lumbar_lightning.data.transforms import PatchGeometry
from lumbar_lightning.inference.pipeline import Pipeline, load_stage_weights
from lumbar_lightning.models.nets import CanalVGG
from lumbar_lightning.models.predictors import three_channels
from lumbar_lightning.models.stages import CanalDetector, GradeClassifier, RootletClassifier
from tests.conftest import quiet_trainer

DM = dict(num_folds=4, batch_size=16, eval_batch_size=64)


def adam(lr: float):
    return lambda params: torch.optim.Adam(params, lr=lr)


def test_vgg_has_the_papers_layout() -> None:
    net = CanalVGG(4, width=1.0, batch_norm=False)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 10 and len(pools) == 4
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
    assert (
        isinstance(net.pool, nn.AdaptiveAvgPool2d) and net.fc.in_features == 512 and net.fc.out_features == 4
    )
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 4)
    small = CanalVGG(1, width=0.125)
    assert [c.out_channels for c in small.modules() if isinstance(c, nn.Conv2d)][-1] == 64


def _overfit(module: L.LightningModule, batch: dict, steps: int) -> tuple[float, float]:
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    module.train()
    losses = []
    for _ in range(steps):
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses[0], float(np.mean(losses[-3:]))


@pytest.mark.parametrize(("task", "cls"), [("rootlet", RootletClassifier), ("grade", GradeClassifier)])
def test_classifiers_learn_and_report_metrics(tiny_phantom: Path, task: str, cls: type) -> None:
    L.seed_everything(0)
    dm = PatchDataModule(task=task, patch=PatchGeometry(32), data_dir=str(tiny_phantom), augment=None, **DM)
    dm.setup()
    module = cls(width=0.125, optimizer=adam(3e-3), scheduler=False)
    module.log = lambda *a, **k: None  # outside a Trainer
    batch = next(iter(dm.train_dataloader()))
    first, last = _overfit(module, batch, 40)
    assert last < 0.5 * first, (first, last)
    # A short fit through a real Trainer computes every metric on the validation split.
    module = cls(width=0.125, optimizer=adam(3e-3), scheduler=False)
    trainer = quiet_trainer(limit_train_batches=3)
    trainer.fit(module, datamodule=dm)
    val = {k: float(v) for k, v in trainer.callback_metrics.items()}  # what Lightning logged
    assert 0.0 <= val["val/acc"] <= 1.0 and 0.0 <= val["val/f1"] <= 1.0
    assert all(f"val/f1_{c}" in val for c in module.class_names)
    confmat = module.confusion_matrix("val")
    assert np.sum(confmat) == len(
        dm.sets["val"]
    )  # one epoch's images, once each (the sanity check was reset)
    assert np.shape(confmat) == (len(module.class_names),) * 2
    assert np.trace(confmat) / np.sum(confmat) == pytest.approx(val["val/acc"])
    assert float(module.val_best.compute()) == pytest.approx(val["val/acc"])


def test_detector_learns_and_reports_map_iou_and_detection_rate(tiny_phantom: Path) -> None:
    L.seed_everything(0)
    dm = SliceDataModule(image_size=96, data_dir=str(tiny_phantom), augment=None, **DM)
    dm.setup()
    module = CanalDetector(image_size=96, optimizer=adam(2e-3), scheduler=False)
    module.log = lambda *a, **k: None
    batch = next(iter(dm.train_dataloader()))
    first, last = _overfit(module, batch, 25)
    assert last < 0.6 * first, (first, last)
    trainer = quiet_trainer(limit_train_batches=2, limit_val_batches=2)
    del module.log  # logging on again, through the Trainer
    trainer.fit(module, datamodule=dm)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    assert set(val) == {"val/map_50", "val/map", "val/iou", "val/acc", "val/acc_best"}
    assert (
        0.0 <= val["val/iou"] <= 1.0 and 0.0 <= val["val/acc"] <= 1.0 and val["val/map_50"] >= val["val/map"]
    )


def test_a_split_is_built_on_first_use_and_once(tiny_phantom: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold whose detector is reloaded (the second rater's) needs the rows, not the resized slices."""
    dm = SliceDataModule(image_size=96, data_dir=str(tiny_phantom), augment=None, **DM)
    built: list[int] = []
    real = dm.build
    monkeypatch.setattr(dm, "build", lambda rows, augment: built.append(len(rows)) or real(rows, augment))
    dm.setup()
    assert built == [] and len(dm.rows["test"]) > 0
    val = dm.sets["val"]
    assert built == [len(dm.rows["val"])] and len(val) == len(dm.rows["val"])
    dm.setup()  # Lightning calls it again for every fit, test and predict
    assert dm.sets["val"] is val and built == [len(dm.rows["val"])]
    with pytest.raises(KeyError):
        dm.sets["holdout"]


def test_detection_map_is_reset_every_epoch(tiny_phantom: Path) -> None:
    dm = SliceDataModule(image_size=96, data_dir=str(tiny_phantom), augment=None, **DM)
    dm.setup()
    module = CanalDetector(image_size=96, scheduler=False)
    trainer = L.Trainer(
        limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    first = trainer.validate(module, datamodule=dm, verbose=False)[0]
    second = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert first["val/map"] == pytest.approx(second["val/map"])  # not accumulated across epochs
    assert module.metrics["val"]["map"].detection_box == []  # reset after compute
    assert module.metrics["val"]["top_box"].iou_matrix == []


class _FixedBoxes(nn.Module):
    """A 'Faster R-CNN' that finds a known box (detector-input pixels) with score 0.9 and a worse one."""

    def forward(self, images):
        best = {"boxes": torch.tensor([[8.0, 16.0, 24.0, 32.0]]), "scores": torch.tensor([0.9])}
        other = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "scores": torch.tensor([0.2])}
        return [{k: torch.cat([other[k], best[k]]) for k in best} | {"labels": torch.ones(2)} for _ in images]


def _FixedDetector(image_size: int) -> CanalDetector:
    detector = CanalDetector(image_size=image_size)
    detector.net = _FixedBoxes()
    return detector


class _MeanLogit(nn.Module):
    """Rootlet logit +6 for a bright patch, -6 for a dark one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.mean(dim=(1, 2, 3)) > 0.5, 6.0, -6.0)[:, None]


class _FixedLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(len(x), 1)


def test_pipeline_chains_stages_on_a_hand_built_case() -> None:
    detector = _FixedDetector(image_size=64)
    rootlet = RootletClassifier(width=0.125)
    rootlet.net = _MeanLogit()
    grader = GradeClassifier(width=0.125, prior_correction=True)
    grader.net = _FixedLogits()
    grader.set_class_prior(np.array([70, 10, 10, 10]))
    pipe = Pipeline(detector.predictor, rootlet.predictor, grader.predictor, PatchGeometry(16, margin=0.0))
    bright = np.zeros((128, 128), np.float32)
    bright[32:64, 16:48] = 1.0  # exactly the detected box, scaled back (x 16..48, y 32..64)
    dark = np.zeros((128, 128), np.float32)
    preds = pipe.predict([bright, dark])
    np.testing.assert_allclose(preds[0].box, [16, 32, 48, 64])  # 64-px detector box scaled to 128 px
    assert preds[0].level == "rootlet" and preds[1].level == "cord"
    assert preds[0].rootlet_prob == pytest.approx(1 / (1 + np.exp(-6)), rel=1e-5)
    # Balanced: softmax([0,1,0,0]) picks B; with the prior (70/10/10/10) A wins: e^0*0.7 vs e^1*0.1.
    balanced = np.exp([0, 1, 0, 0]) / np.exp([0, 1, 0, 0]).sum()
    corrected = np.array([0.7, np.e * 0.1, 0.1, 0.1]) / (0.7 + np.e * 0.1 + 0.2)
    np.testing.assert_allclose(preds[0].grade_probs_balanced, balanced, rtol=1e-5)
    np.testing.assert_allclose(preds[0].grade_probs, corrected, rtol=1e-5)
    assert preds[0].grade == "A" and preds[0].as_row()["pred_grade_balanced"] == "B"
    assert preds[1].grade == ""  # cord slices are not graded
    # Given boxes bypass the detector (the ground-truth-box path).
    given = pipe.predict([dark], boxes=np.array([[0, 0, 10, 10]]))
    np.testing.assert_allclose(given[0].box, [0, 0, 10, 10])


def test_trainer_predict_serves_each_stage_as_the_pipeline_chains_it() -> None:
    """Every stage has predict_step, and Trainer.predict returns what the pipeline uses."""
    detector = _FixedDetector(image_size=64)
    grader = GradeClassifier(width=0.125, prior_correction=True)
    grader.net = _FixedLogits()
    grader.set_class_prior(np.array([70, 10, 10, 10]))
    rootlet = RootletClassifier(width=0.125)
    rootlet.net = _MeanLogit()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )

    def loader(batch: dict) -> torch.utils.data.DataLoader:  # one batch, as it is
        return torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda b: b)

    images = [torch.rand(1, 64, 64) for _ in range(3)]
    (top,) = trainer.predict(detector, dataloaders=loader({"image": images}))
    np.testing.assert_allclose(top["boxes"].numpy(), [[8, 16, 24, 32]] * 3)
    patches = torch.cat([torch.ones(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)])
    (graded,) = trainer.predict(grader, dataloaders=loader({"image": patches}))
    (levels,) = trainer.predict(rootlet, dataloaders=loader({"image": patches}))
    pipe = Pipeline(detector.predictor, rootlet.predictor, grader.predictor, PatchGeometry(16, margin=0.0))
    chained = pipe.classify([p[0].numpy() for p in patches], np.array([[0, 0, 16, 16]] * 2, np.float32))
    np.testing.assert_allclose(graded["probs"].numpy(), chained["grade_probs"], rtol=1e-6)
    np.testing.assert_allclose(graded["probs_balanced"].numpy(), chained["grade_probs_balanced"], rtol=1e-6)
    np.testing.assert_allclose(levels["probs"][:, 1].numpy(), chained["rootlet_prob"], rtol=1e-6)
    assert (
        levels["probs"][0, 1] > 0.99 and levels["probs"][1, 1] < 0.01
    )  # bright patch rootlet, dark one cord
    corrected = np.array([0.7, np.e * 0.1, 0.1, 0.1]) / (0.7 + np.e * 0.1 + 0.2)
    np.testing.assert_allclose(graded["probs"][0].numpy(), corrected, rtol=1e-5)


class _LeftMinusRight(nn.Module):
    """Logits that see only left-right asymmetry: mirror images get opposite logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        d = x[..., :half].mean(dim=(1, 2, 3)) - x[..., half:].mean(dim=(1, 2, 3))
        return torch.stack([d, -d, 2 * d, 1 + 0 * d], dim=-1)


def test_flip_tta_averages_a_patch_and_its_mirror_in_eval_only() -> None:
    x = torch.zeros(2, 1, 8, 8)
    x[0, ..., :4] = 1.0  # bright left half: d = +1
    x[1, ..., 4:] = 0.5  # bright right half: d = -0.5
    plain, tta = GradeClassifier(width=0.125), GradeClassifier(width=0.125, flip_tta=True)
    plain.net = tta.net = _LeftMinusRight()
    plain.eval()
    tta.eval()
    np.testing.assert_allclose(plain(x)[:, 0].numpy(), [1.0, -0.5])
    # Mirror-odd logits cancel; the constant one stays.
    np.testing.assert_allclose(tta(x).numpy(), [[0, 0, 0, 1], [0, 0, 0, 1]], atol=1e-7)
    tta.train()  # training sees the patch as sampled (its augmentation flips at random)
    np.testing.assert_allclose(tta(x)[:, 0].numpy(), [1.0, -0.5])
    tta.eval()
    # The validation inside fit (it picks the checkpoint and steers the LR) reads the patch alone, so the option
    # never changes what is trained; a validate, test or predict after fit reads both.
    tta._trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING, status=TrainerStatus.RUNNING))
    np.testing.assert_allclose(tta(x)[:, 0].numpy(), [1.0, -0.5])
    # the fit's trainer, still attached once it ended, then a validate, test or predict
    after_fit = [(TrainerFn.FITTING, TrainerStatus.FINISHED)]
    after_fit += [
        (fn, TrainerStatus.RUNNING) for fn in (TrainerFn.VALIDATING, TrainerFn.TESTING, TrainerFn.PREDICTING)
    ]
    for fn, status in after_fit:
        tta._trainer = SimpleNamespace(state=SimpleNamespace(fn=fn, status=status))
        np.testing.assert_allclose(tta(x).numpy(), [[0, 0, 0, 1], [0, 0, 0, 1]], atol=1e-7)


def test_checkpoint_of_another_config_fails_clearly(tmp_path: Path) -> None:
    small = GradeClassifier(width=0.125)
    torch.save({"state_dict": small.state_dict()}, tmp_path / "small.ckpt")
    load_stage_weights(GradeClassifier(width=0.125), tmp_path / "small.ckpt")
    with pytest.raises(ValueError, match=r"does not fit the configured GradeClassifier"):
        load_stage_weights(GradeClassifier(width=0.25), tmp_path / "small.ckpt")


@pytest.mark.parametrize("backbone", ["compact", "mobilenet_v3_fpn", "resnet50_fpn"])
def test_every_detector_backbone_trains_and_predicts(backbone: str, tmp_path: Path) -> None:
    module = CanalDetector(backbone=backbone, image_size=64, anchor_sizes=(8, 16, 32), scheduler=False)
    images = [torch.rand(1, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[20.0, 24.0, 40.0, 44.0]]), "labels": torch.tensor([1])}] * 2
    losses = module.net(three_channels(images), targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(losses)
    sum(losses.values()).backward()
    boxes, scores = module.predict_top_box(images)
    assert boxes.shape == (2, 4) and scores.shape == (2,)
    # `pretrained` loads a local file only, and refuses one that fits nothing.
    torch.save(module.net.state_dict(), tmp_path / "w.pt")
    CanalDetector(
        backbone=backbone, image_size=64, anchor_sizes=(8, 16, 32), pretrained=str(tmp_path / "w.pt")
    )
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no tensor matches"):
        CanalDetector(backbone=backbone, image_size=64, pretrained=str(tmp_path / "bad.pt"))


def test_the_baseline_cnn_is_small_and_plain() -> None:
    """model/grade=baseline: four conv layers (no VGG blocks), a few thousand weights, four grade logits."""

    from lumbar_lightning.models.stages import GradeClassifier

    plain = GradeClassifier(arch="plain", width=0.5, channels_last=False)
    vgg = GradeClassifier(width=0.125)
    convs = [m for m in plain.net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 32]
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in vgg.parameters())
    assert plain(torch.zeros(3, 1, 32, 32)).shape == (3, 4)
    with pytest.raises(ValueError, match="arch must be"):
        GradeClassifier(arch="resnet")


def test_the_detector_can_draw_severe_canals_more_often(tiny_phantom: Path) -> None:
    """balance=1: each class (cord, A-D) is drawn about equally often; balance=0 keeps the paper's permutation."""
    dm = SliceDataModule(image_size=96, data_dir=str(tiny_phantom), augment=None, balance=1.0, **DM)
    dm.setup()
    rows = dm.rows["train"]
    classes = np.where(rows["level"] == "cord", "cord", rows["grade"].astype(str))
    sampler = dm.sampler("train")
    draws = [classes[i] for _ in range(40) for i, _ in sampler]
    names, counts = np.unique(draws, return_counts=True)
    assert len(names) == len(set(classes)) and counts.min() / counts.max() > 0.8
    plain = SliceDataModule(image_size=96, data_dir=str(tiny_phantom), augment=None, **DM)
    plain.setup()
    order = [i for i, _ in plain.sampler("train")]
    assert sorted(order) == list(range(len(rows)))  # a permutation: every slice once per epoch


def test_an_ensemble_says_how_many_of_its_folds_agree_with_its_call() -> None:
    from lumbar_lightning.inference.ensemble import Ensemble

    def pipeline(grade_logits: list[float]) -> Pipeline:
        rootlet = RootletClassifier(width=0.125)
        rootlet.net = _MeanLogit()
        grader = GradeClassifier(width=0.125, prior_correction=False)
        grader.net = _Constant(grade_logits)
        return Pipeline(_FixedDetector(64).predictor, rootlet.predictor, grader.predictor, PatchGeometry(16))

    bright = np.zeros((128, 128), np.float32)
    bright[32:64, 16:48] = 1.0
    folds = [pipeline([0, 3, 0, 0]), pipeline([0, 3, 0, 0]), pipeline([0, 0, 4, 0])]  # B, B, C
    (pred,) = Ensemble(folds).predict([bright], pixel_mm=[1.0])
    assert pred.level == "rootlet" and pred.grade == "B"  # the mean probabilities still favour B
    assert pred.fold_agreement == pytest.approx(2 / 3)
    assert pred.confidence == pytest.approx(min(pred.rootlet_prob, float(pred.grade_probs.max())))


class _Constant(nn.Module):
    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor([logits], dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.repeat(len(x), 1)


def test_soft_targets_train_against_the_raters_votes() -> None:
    """A consensus label of half B, half D: cross-entropy against the votes, and the ordinal term's expected
    distance is the mean of the distances to B and to D."""
    grader = GradeClassifier(width=0.125, ordinal_weight=0.5)
    logits = torch.tensor([[0.0, 2.0, 0.0, 1.0]])
    soft = torch.tensor([[0.0, 0.5, 0.0, 0.5]])
    p = logits.softmax(-1)[0]
    to_b, to_d = (p * torch.tensor([1.0, 0, 1, 2])).sum(), (p * torch.tensor([3.0, 2, 1, 0])).sum()
    ce = -(0.5 * logits.log_softmax(-1)[0, 1] + 0.5 * logits.log_softmax(-1)[0, 3])
    want = ce + 0.5 * 0.5 * (to_b + to_d)
    torch.testing.assert_close(grader.loss(logits, torch.tensor([3]), soft), want)
    # A one-hot vote is the hard label, exactly.
    hard = grader.loss(logits, torch.tensor([3]))
    torch.testing.assert_close(grader.loss(logits, torch.tensor([3]), torch.tensor([[0.0, 0, 0, 1]])), hard)
    rootlet = RootletClassifier(width=0.125)
    half = rootlet.loss(torch.tensor([[0.0]]), torch.tensor([1]), torch.tensor([[0.5, 0.5]]))
    assert float(half) == pytest.approx(np.log(2))


def test_calibration_reads_the_kept_validation_and_test_passes(
    tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After training, the validation and test passes keep their log-probabilities; calibration fits on them
    (bit for bit what predicting each split again gives) and predicts again only for a split they did not cover."""
    from lumbar_lightning.engine.fold import calibrate

    L.seed_everything(0)
    dm = PatchDataModule(
        task="grade", patch=PatchGeometry(32), data_dir=str(tiny_phantom), augment=None, **DM
    )
    dm.setup()
    module = GradeClassifier(width=0.125, optimizer=adam(3e-3), scheduler=False, flip_tta=True)
    quiet_trainer(limit_train_batches=3).fit(module, datamodule=dm)
    tester = quiet_trainer()
    module.keep_outcomes()
    tester.validate(module, datamodule=dm, verbose=False)
    tester.test(module, datamodule=dm, verbose=False)
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        batches = tester.predict(module, dataloaders=loader)
        again = torch.cat([b["log_probs"] for b in batches]).double().numpy()
        kept, targets = module.kept_outcomes(split)
        np.testing.assert_array_equal(kept, again)  # the mirror reading included: both are eval-mode reads
        np.testing.assert_array_equal(targets, torch.cat([b["target"] for b in batches]).numpy())
    predicted: list[int] = []
    real = tester.predict
    monkeypatch.setattr(tester, "predict", lambda *a, **k: predicted.append(1) or real(*a, **k))
    report = calibrate(tester, module, dm, tmp_path / "none.ckpt")
    assert predicted == [] and report["temperature"] > 0
    # A pass at a fitted temperature keeps nothing; one over part of the split (limit_val_batches) is not used.
    tester.validate(module, datamodule=dm, verbose=False)
    assert float(module.temperature) != 1.0 and module.kept_outcomes("val") is None
    module.set_temperature(1.0)
    quiet_trainer(limit_val_batches=1).validate(module, datamodule=dm, verbose=False)
    assert len(module.kept_outcomes("val")[1]) < len(dm.sets["val"])
    assert calibrate(tester, module, dm, tmp_path / "none.ckpt") == report and predicted == [1]


def test_detector_calibration_reads_the_kept_test_pass(
    tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The detector's test pass keeps each slice's top box and score; calibration reads them (bit for bit what
    predicting the split again gives) and predicts only the validation split, which no pass after training read."""
    from lumbar_lightning.engine.fold import calibrate
    from lumbar_lightning.models.metrics import detection_outcomes

    L.seed_everything(0)
    dm = SliceDataModule(image_size=96, data_dir=str(tiny_phantom), augment=None, **DM)
    dm.setup()
    module = CanalDetector(image_size=96, optimizer=adam(2e-3), scheduler=False)
    quiet_trainer(limit_train_batches=2, limit_val_batches=1).fit(module, datamodule=dm)
    tester = quiet_trainer()
    module.keep_outcomes()
    tester.test(module, datamodule=dm, verbose=False)
    kept, found = module.kept_outcomes("test")
    again, found_again = detection_outcomes(tester.predict(module, dataloaders=dm.test_dataloader()))
    assert len(found) == len(dm.sets["test"])
    np.testing.assert_array_equal(kept, again)
    np.testing.assert_array_equal(found, found_again)
    assert module.kept_outcomes("val") is None
    predicted: list[int] = []
    real = tester.predict
    monkeypatch.setattr(tester, "predict", lambda *a, **k: predicted.append(1) or real(*a, **k))
    report = calibrate(tester, module, dm, tmp_path / "none.ckpt")
    assert predicted == [1] and report["temperature"] > 0  # the validation split only
    module.keep_outcomes(False)
    assert calibrate(tester, module, dm, tmp_path / "none.ckpt") == report and predicted == [1, 1, 1]


def test_presized_detector_input_trains_and_detects_as_torchvision_does() -> None:
    """Skipping the detection transform's identity resize and padded copy changes nothing: the same losses,
    gradients and detections as torchvision's own transform (its per-image size draw is still made)."""
    import copy

    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from lumbar_lightning.models.nets import PresizedTransform
    from lumbar_lightning.models.predictors import CanalBoxPredictor

    torch.manual_seed(0)
    built = CanalBoxPredictor.build(64, box_batch_size_per_image=16)
    assert isinstance(built.net.transform, PresizedTransform)
    images = [torch.rand(1, 64, 64).expand(3, -1, -1) for _ in range(3)]
    box = torch.tensor([[20.0, 22.0, 40.0, 44.0]])

    def run(transform: nn.Module) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
        net = copy.deepcopy(built.net)
        net.transform = transform
        torch.manual_seed(1)
        targets = [{"boxes": box.clone(), "labels": torch.ones(1, dtype=torch.int64)} for _ in images]
        loss = sum(net(images, targets).values())
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
        with torch.no_grad():
            return loss.detach(), grads, net.eval()(images)

    theirs = GeneralizedRCNNTransform(64, 64, [0.5] * 3, [0.25] * 3)
    ours = run(built.net.transform)
    reference = run(theirs)
    assert torch.equal(ours[0], reference[0]) and torch.equal(ours[1], reference[1])
    for a, b in zip(ours[2], reference[2], strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    # Another size still goes through torchvision's resize.
    other = built.net.transform.eval()
    batch, _ = other([torch.rand(3, 80, 80)])
    assert tuple(batch.tensors.shape[-2:]) == (64, 64)
