"""LightningDataModules for one fold and one rater: slices with boxes (detector), canal patches (classifiers).

Both read normalised images from the ingestion cache, never DICOM, and take their split from
``StratifiedPatientFolds``. A split's rows are chosen at ``setup``; its patches or resized slices are prepared on
first use and kept in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from lumbar_lightning.data.augment import Augmenter
from lumbar_lightning.data.consensus import ConsensusModel
from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.folds import SPLITS, StratifiedPatientFolds
from lumbar_lightning.data.grading import active
from lumbar_lightning.data.labels import BOX_COLUMNS, CONSENSUS, LEVEL_INDEX, grades
from lumbar_lightning.data.series import canal_brightness, reference_slices
from lumbar_lightning.data.transforms import PatchGeometry, require_pixel_spacing, scale_boxes

TASKS = ("rootlet", "grade")
BOX = list(BOX_COLUMNS)

_DATASETS: dict[tuple[str, str, str], LumbarDataset] = {}


def load_dataset(
    data_dir: str | Path, cache_dir: str | Path | None = None, salt: str = "lumbar-lightning"
) -> LumbarDataset:
    """Ingest a data set once per process (every stage and fold of a CV run shares it)."""
    key = (str(Path(data_dir).resolve()), str(cache_dir), salt)
    if key not in _DATASETS:
        _DATASETS[key] = LumbarDataset.ingest(data_dir, cache_dir, salt=salt)
    return _DATASETS[key]


def fold_rows(
    dataset: LumbarDataset,
    folds: StratifiedPatientFolds,
    fold: int,
    rater: str,
    consensus: ConsensusModel | None = None,
) -> dict[str, pd.DataFrame]:
    """The rater's label rows per split of ``fold``, joined with each image's patient, series and size.

    For the ``consensus`` rater, ``consensus`` (default ``VoteShares``) turns the raters' calls into targets; a
    model that is fitted (``DawidSkene``) sees the training split's images only."""
    meta = dataset.images.set_index("sop_instance_uid")[["patient", "series_instance_uid", "rows", "columns"]]
    split = folds.split(fold)
    if rater == CONSENSUS:
        train = meta.index[meta["patient"].isin(split["train"])].tolist()
        labels = dataset.labels.consensus(consensus, fit=train).reset_index(drop=True)
    else:
        labels = dataset.labels.for_rater(rater).reset_index(drop=True)
    labels = labels.join(meta, on="sop_instance_uid")
    return {name: labels[labels["patient"].isin(split[name])].reset_index(drop=True) for name in SPLITS}


class EpochSampler(torch.utils.data.Sampler):
    """Training order drawn from (seed, epoch) alone, yielding ``(index, epoch)`` so each item's augmentation is
    seeded by (seed, epoch, index) too. A run resumed at epoch k therefore sees exactly the samples and
    augmentations an uninterrupted run sees at epoch k, whatever the worker count.

    ``weights`` given: ``num_samples`` draws with replacement (class-balanced sampling); else a permutation.
    Lightning calls ``set_epoch``; when nothing does (a distributed wrapper), each pass counts as the next epoch.
    """

    def __init__(
        self, size: int, seed: int, weights: np.ndarray | None = None, num_samples: int | None = None
    ) -> None:
        self.size, self.seed, self.weights = size, seed, weights
        self.num_samples = num_samples or size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        )
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            weights = torch.as_tensor(self.weights, dtype=torch.double)
            order = torch.multinomial(weights, self.num_samples, replacement=True, generator=generator)
        yield from ((int(i), epoch) for i in order)


def item_seed(seed: int, key: int | tuple[int, int]) -> tuple[int, int | None]:
    """(index, augmentation seed) of a dataset key: a plain index (evaluation) has no augmentation seed."""
    if isinstance(key, tuple):
        index, epoch = key
        return index, int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
    return int(key), None


class DetectionSlices(Dataset):
    """Slices resized to the detector's input with the rater's canal box scaled alike."""

    def __init__(
        self,
        images: np.ndarray,
        boxes: np.ndarray,
        uids: list[str],
        augment: Augmenter | None = None,
        seed: int = 0,
    ) -> None:
        self.images, self.boxes, self.uids, self.augment, self.seed = images, boxes, uids, augment, seed

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, aug_seed = item_seed(self.seed, key)
        image, box = self.images[i].astype(np.float32), self.boxes[i : i + 1]
        if self.augment is not None:
            warped, warped_box = self.augment(image, aug_seed, boxes=box)
            if warped_box is not None:  # a box pushed out of view keeps the un-augmented sample
                image, box = warped, warped_box
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "boxes": torch.as_tensor(box, dtype=torch.float32).reshape(-1, 4),
            "sop_instance_uid": self.uids[i],
        }


def collate_detection(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Detection batches stay lists: torchvision's detector takes a list of images and a list of targets."""
    return {k: [it[k] for it in items] for k in items[0]}


class CanalPatches(Dataset):
    """Canal patches cut around the rater's boxes, with the target of one task (and, for the consensus of several
    raters, ``soft_targets``: each class's share of their votes)."""

    def __init__(
        self,
        patches: np.ndarray,
        targets: np.ndarray,
        uids: list[str],
        geometry: PatchGeometry,
        augment: Augmenter | None = None,
        seed: int = 0,
        soft_targets: np.ndarray | None = None,
    ) -> None:
        self.patches, self.targets, self.uids, self.geometry = patches, targets, uids, geometry
        self.augment, self.seed, self.soft_targets = augment, seed, soft_targets

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, aug_seed = item_seed(self.seed, key)
        # (H, W), or (C, H, W) with a series reference: the channels are augmented as one (H, W, C) image, so
        # every channel gets the same warp (the series reference moves with the patch it accompanies)
        patch = self.patches[i] if self.patches.ndim == 4 else self.patches[i][None]
        if self.augment is not None:  # the warp also cuts the training context back to the patch size
            hwc = self.augment(np.moveaxis(patch, 0, -1), aug_seed, out_size=self.geometry.size)[0]
            patch = np.moveaxis(hwc.reshape(*hwc.shape[:2], -1), -1, 0)
        else:
            patch = np.stack([self.geometry.center_crop(c) for c in patch])
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32)),
            "target": int(self.targets[i]),
            "sop_instance_uid": self.uids[i],
        }
        if self.soft_targets is not None:
            item["soft_target"] = torch.from_numpy(self.soft_targets[i].astype(np.float32))
        return item


class SplitSets(Mapping[str, Dataset]):
    """The splits' datasets, each built on first use: a run that reloads a finished stage (the second rater's
    fold reuses the fold's detector) needs only the rows (a lone fold's resized slices take about 3 s to build)."""

    def __init__(self, build: Callable[[str], Dataset]) -> None:
        self._build, self._built = build, {}

    def __getitem__(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise KeyError(split)
        if split not in self._built:
            self._built[split] = self._build(split)
        return self._built[split]

    def __iter__(self) -> Iterator[str]:
        return iter(SPLITS)

    def __len__(self) -> int:
        return len(SPLITS)


class LumbarDataModule(L.LightningDataModule):
    """What both data modules share: the data set, the fold, the rater, loaders built by one factory.

    ``consensus`` is how the ``consensus`` rater's targets come from the raters' calls (``data/consensus``)."""

    def __init__(
        self,
        data_dir: str,
        rater: str = "A1",
        fold: int = 0,
        num_folds: int = 10,
        split_seed: int = 0,
        cache_dir: str | None = None,
        pseudonym_salt: str = "lumbar-lightning",
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        augment: Augmenter | None = None,
        seed: int = 0,
        consensus: ConsensusModel | None = None,
    ) -> None:
        super().__init__()
        self.data_dir, self.cache_dir, self.salt = data_dir, cache_dir, pseudonym_salt
        self.rater, self.fold, self.num_folds, self.split_seed = rater, fold, num_folds, split_seed
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.augment = augment
        self.seed = seed
        self.consensus = consensus
        self.dataset: LumbarDataset | None = None
        self.folds: StratifiedPatientFolds | None = None
        self.rows: dict[str, pd.DataFrame] = {}
        self.sets: Mapping[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.rows:
            return
        self.dataset = load_dataset(self.data_dir, self.cache_dir, self.salt)
        self.folds = self.dataset.folds(self.num_folds, self.split_seed)
        self.rows = {
            name: self.select(rows)
            for name, rows in fold_rows(
                self.dataset, self.folds, self.fold, self.rater, self.consensus
            ).items()
        }
        for name in SPLITS:
            if self.rows[name].empty:
                raise DataContractError(
                    f"fold {self.fold}, rater {self.rater}: the {name} split has no usable labelled image"
                )
        self.sets = SplitSets(
            lambda name: self.build(self.rows[name], self.augment if name == "train" else None)
        )

    # Subclasses say which rows they use and how items are built.
    def select(self, rows: pd.DataFrame) -> pd.DataFrame:
        return rows

    def build(self, rows: pd.DataFrame, augment: Augmenter | None) -> Dataset:
        raise NotImplementedError

    @property
    def sampler_seed(self) -> int:
        return self.seed + 1000 * self.fold

    def sampler(self, split: str) -> torch.utils.data.Sampler | None:
        """Training order: a seeded permutation per epoch (subclasses may weight it)."""
        return EpochSampler(len(self.sets[split]), self.sampler_seed)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return torch.utils.data.default_collate(items)

    def _dataloader_factory(self, split: str) -> DataLoader:
        train = split == "train"
        sampler = self.sampler(split) if train else None
        # ``batch_size`` is the global batch: with N processes each loads 1/N of it, so a step sees as many
        # images, and the learning rate means the same, with 1 or N processes.
        world = self.trainer.world_size if self.trainer is not None else 1
        batch_size = max(1, (self.batch_size if train else self.eval_batch_size) // world)
        return DataLoader(
            self.sets[split],
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            drop_last=False,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._dataloader_factory("train")

    def val_dataloader(self) -> DataLoader:
        return self._dataloader_factory("val")

    def test_dataloader(self) -> DataLoader:
        return self._dataloader_factory("test")

    def describe(self) -> dict[str, Any]:
        """Counts per split for logs and metrics.json (no identifiers)."""
        return {
            name: {"images": len(rows), "patients": int(rows["patient"].nunique())}
            for name, rows in self.rows.items()
        }


class SliceDataModule(LumbarDataModule):
    """Whole slices with the rater's canal box, for the ``CanalDetector``; all labelled slices are used.

    ``balance`` > 0 draws training slices with weights ``1 / count(class) ** balance`` over the classes cord, A, B,
    C and D (0: a plain permutation, as in the paper). Severe canals are small and dark, 2-7% of the slices, and a
    detector that rarely sees them boxes the bright disc nucleus instead, which the grader then calls A.
    """

    def __init__(self, image_size: int = 160, balance: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.balance = float(balance)

    def sampler(self, split: str) -> torch.utils.data.Sampler | None:
        if not self.balance:
            return super().sampler(split)
        rows = self.rows[split]
        classes = np.where(rows["level"] == "cord", "cord", rows["grade"].astype(str)).astype(str)
        _, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
        weights = 1.0 / counts[inverse].astype(float) ** self.balance
        return EpochSampler(len(rows), self.sampler_seed, weights, len(rows))

    def build(self, rows: pd.DataFrame, augment: Augmenter | None) -> Dataset:
        assert self.dataset is not None
        images = np.stack([self.dataset.resized(uid, self.image_size) for uid in rows["sop_instance_uid"]])
        boxes = np.stack(
            [
                scale_boxes(
                    np.array([r.x_min, r.y_min, r.x_max, r.y_max]),
                    (r.rows, r.columns),
                    (self.image_size,) * 2,
                )
                for r in rows.itertuples()
            ]
        )
        return DetectionSlices(
            images, boxes, rows["sop_instance_uid"].tolist(), augment, seed=self.sampler_seed
        )

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_detection(items)


class PatchDataModule(LumbarDataModule):
    """Canal patches for the rootlet/cord classifier (all slices) or the grader (rootlet slices with a grade).

    ``balanced`` draws classes equally often (the paper's weighted sampling); ``samples_per_epoch`` sets how
    many patches an epoch draws (default: the training set's size). ``series_reference`` adds a second channel:
    the series' reference slice (``reference_slices``, from the rater's levels and boxes) cut at the scale of
    the patch it accompanies.
    """

    def __init__(
        self,
        task: str = "grade",
        patch: dict[str, Any] | PatchGeometry | None = None,
        balanced: bool = True,
        samples_per_epoch: int | None = None,
        series_reference: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.geometry = patch if isinstance(patch, PatchGeometry) else PatchGeometry(**(patch or {}))
        self.balanced, self.samples_per_epoch = balanced, samples_per_epoch
        self.series_reference = series_reference

    def select(self, rows: pd.DataFrame) -> pd.DataFrame:
        assert self.dataset is not None
        require_pixel_spacing(
            [self.geometry], self.dataset.images.set_index("sop_instance_uid").loc[rows["sop_instance_uid"]]
        )
        if self.series_reference:  # chosen among all the series' labelled slices, before the task's filter
            own = np.stack(
                [  # each slice cut at its own box, as evaluation sees it (cached for later folds)
                    self.dataset.patch(uid, tuple(box), self.geometry, 1.0)
                    for uid, box in zip(
                        rows["sop_instance_uid"], rows[BOX].to_numpy(dtype=float), strict=True
                    )
                ]
            )
            refs = reference_slices(
                rows["series_instance_uid"].to_numpy(),
                canal_brightness(own),
                (rows["level"] == "rootlet").to_numpy(),
            )
            rows = rows.assign(
                ref_uid=rows["sop_instance_uid"].to_numpy()[refs],
                **{f"ref_{c}": rows[c].to_numpy()[refs] for c in BOX},
            )
        if self.task == "grade":
            rows = rows[(rows["level"] == "rootlet") & (rows["grade"] != "")]
        return rows.reset_index(drop=True)

    def targets(self, rows: pd.DataFrame) -> np.ndarray:
        if self.task == "rootlet":
            return rows["level"].map(LEVEL_INDEX).to_numpy(dtype=np.int64)
        return rows["grade"].map(active().index).to_numpy(dtype=np.int64)

    def soft_targets(self, rows: pd.DataFrame) -> np.ndarray | None:
        """Each class's share of the raters' votes, where the rows are a consensus (``LabelTable.consensus``)."""
        if "rootlet_share" not in rows:
            return None
        if self.task == "rootlet":
            share = rows["rootlet_share"].to_numpy(dtype=float)
            return np.stack([1.0 - share, share], axis=1)  # class order: LEVEL_INDEX (cord 0, rootlet 1)
        return rows[[f"grade_share_{g}" for g in grades()]].to_numpy(dtype=float)

    @property
    def num_classes(self) -> int:
        return 2 if self.task == "rootlet" else len(grades())

    def build(self, rows: pd.DataFrame, augment: Augmenter | None) -> Dataset:
        assert self.dataset is not None
        context = 1.35 if augment is not None else 1.0
        boxes = rows[BOX].to_numpy(dtype=float)
        patches = np.stack(
            [
                self.dataset.patch(uid, tuple(box), self.geometry, context)
                for uid, box in zip(rows["sop_instance_uid"], boxes, strict=True)
            ]
        )
        if self.series_reference:
            refs = np.stack(
                [
                    self.dataset.patch(uid, tuple(ref), self.geometry, context, scale_box=tuple(box))
                    for uid, ref, box in zip(
                        rows["ref_uid"],
                        rows[[f"ref_{c}" for c in BOX]].to_numpy(dtype=float),
                        boxes,
                        strict=True,
                    )
                ]
            )
            patches = np.stack([patches, refs], axis=1)
        return CanalPatches(
            patches,
            self.targets(rows),
            rows["sop_instance_uid"].tolist(),
            self.geometry,
            augment,
            self.sampler_seed,
            self.soft_targets(rows),
        )

    def class_counts(self, split: str = "train") -> np.ndarray:
        return np.bincount(self.targets(self.rows[split]), minlength=self.num_classes)

    def sampler(self, split: str) -> torch.utils.data.Sampler | None:
        targets = self.targets(self.rows[split])
        if not self.balanced:
            if self.samples_per_epoch is None:
                return super().sampler(split)
            weights = np.ones(len(targets))
        else:
            counts = np.bincount(targets, minlength=self.num_classes).astype(float)
            weights = 1.0 / counts[targets]
        return EpochSampler(len(targets), self.sampler_seed, weights, self.samples_per_epoch or len(targets))
