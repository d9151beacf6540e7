"""The speed benchmarks (``lumbar-bench``, ``make bench``): speed against this machine's limit and against what a user would otherwise write.

Every figure is the median of several repeats after a warm-up; every comparison is measured A/B/A/B in this
process, so drift hits both sides alike. Machines are noisy: read the ratios, not the absolute times.

Sections: (1) compute efficiency: training images/s per stage at the demo and paper presets, achieved FLOP/s
(``torch.utils.flop_counter``) over a 2048x2048 fp32 GEMM timed here; (2) framework overhead: ``Trainer.fit`` vs
a plain PyTorch loop, same model, data and steps; (3) data path: the demo training DataLoader vs the model's
consumption, and the cache vs a naive ``pydicom.dcmread`` per item; each augmentation preset (cv2 warp,
albumentations, albumentations with 2 worker processes): loader vs model, and whole training steps;
(4) inference: ``Pipeline`` latency per 40-slice study, peak RSS; (5) phantom generation and ingestion; (6) numerics: the demo's training steps with
pinned vs native numerics (``lumbar_lightning.numerics``), in fresh processes; (7) GPU: fp32 vs bf16 autocast, channels_last,
only when CUDA is present.

``lumbar-bench [small=true] [record=README]`` prints the table and writes ``bench.json``.
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import pydicom
import torch
from torch.utils.flop_counter import FlopCounterMode

from lumbar_lightning.data.datamodules import item_seed
from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.dicom.pixels import decode_pixels, normalise
from lumbar_lightning.data.phantom.cohort import PhantomCohort, PhantomConfig
from lumbar_lightning.models.stages import CanalDetector, PatchClassifier, StageModule

STAGES = ("detector", "rootlet", "grade")
#: Targets from the benchmark issue, checked in the printed table.
TARGETS = {
    "paper/rootlet/efficiency": (">=", 0.5),
    "paper/grade/efficiency": (">=", 0.5),
    "overhead/fit_over_plain": ("<=", 1.05),
    "data/loader_over_model": (">=", 3.0),
    "data/cached_over_naive": (">=", 10.0),
    "inference/demo/seconds_per_study": ("<=", 2.0),
}


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn) for _ in range(repeats))


def ab_medians(a: Callable[[], Any], b: Callable[[], Any], rounds: int = 3) -> tuple[float, float]:
    """Median times of ``a`` and ``b`` over ``ab_rounds``' order-alternating pairs (AB, BA, ...)."""
    ta, tb, _ = ab_rounds(a, b, rounds)
    return statistics.median(ta), statistics.median(tb)


def ab_rounds(
    a: Callable[[], Any], b: Callable[[], Any], rounds: int
) -> tuple[list[float], list[float], float]:
    """``a`` and ``b`` timed in pairs, the order alternating (AB, BA, AB, ...) so that a drift of the machine's
    speed hits both alike; returns both time lists and the median of the per-pair ratios b/a, which a noisy
    neighbour slowing one whole pair does not move (a ratio of medians can pair a fast A with a slow B)."""
    a(), b()
    ta, tb = [], []
    for i in range(rounds):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1, t2 = _timed(first), _timed(second)
        ta.append(t1 if i % 2 == 0 else t2)
        tb.append(t2 if i % 2 == 0 else t1)
    return ta, tb, statistics.median(y / x for x, y in zip(ta, tb, strict=True))


# -- presets -----------------------------------------------------------------------------------------------
def preset(experiment: str, *extra: str) -> Any:
    """The composed config of an experiment (its real model, patch and batch settings), with ``extra`` overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lumbar_lightning.conf import CONF_DIR

    overrides = [f"experiment={experiment}", "logger=none", *extra]
    if GlobalHydra.instance().is_initialized():  # inside lumbar-bench: the app's own config tree
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def stage_inputs(cfg: Any, stage: str, module: StageModule, batch: int | None = None) -> dict[str, Any]:
    """A synthetic training batch of the stage's real input shape (speed does not depend on pixel values)."""
    from lumbar_lightning.engine.fold import stage_geometry

    n = batch or int(cfg.model[stage].batch_size)
    gen = torch.Generator().manual_seed(0)
    if isinstance(module, CanalDetector):
        s = module.image_size
        boxes = torch.tensor([[0.4 * s, 0.55 * s, 0.6 * s, 0.7 * s]])
        return {
            "image": [torch.rand(1, s, s, generator=gen) for _ in range(n)],
            "boxes": [boxes.clone() for _ in range(n)],
        }
    size = stage_geometry(cfg, stage).size
    classes = 2 if stage == "rootlet" else 4
    channels = 2 if module.hparams.get("series_reference") else 1  # a grader's series reference channel
    return {
        "image": torch.rand(n, channels, size, size, generator=gen),
        "target": torch.randint(0, classes, (n,), generator=gen),
    }


def _train_step(module: StageModule, optimizer: torch.optim.Optimizer, batch: dict[str, Any]) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()


def train_step_flops(module: StageModule, batch: dict[str, Any]) -> int:
    """FLOPs of one forward + backward (matmuls and convolutions, as torch's counter sees them)."""
    with FlopCounterMode(display=False) as counter:
        module.training_step(batch, 0).backward()
    module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def gemm_peak_flops(n: int = 2048, repeats: int = 7) -> float:
    """The machine's fp32 matmul peak: the fastest of ``repeats`` GEMMs (a peak is a best case; on this shared VM
    single GEMMs ranged 99-173 GFLOP/s, so a median under-states it and pushed efficiencies above 1)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    return 2.0 * n**3 / min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))


def compute_section(presets: dict[str, Any], peak: float, steps: int, small: bool) -> dict[str, float]:
    from lumbar_lightning.engine.fold import build_modules

    out: dict[str, float] = {}
    for name, cfg in presets.items():
        modules = build_modules(cfg)
        for stage in STAGES:
            module = modules[stage].train()
            batch_size = 2 if small else None
            if name == "paper" and stage == "detector" and not small:
                batch_size = 2  # ResNet50-FPN at 320 px: a GPU workload; two images keep the CPU run short
            batch = stage_inputs(cfg, stage, module, batch_size)
            n = len(batch["image"])
            optimizer = torch.optim.Adam(module.parameters(), lr=1e-5)
            flops = train_step_flops(module, batch)
            reps = 1 if (name == "paper" and stage == "detector") else steps
            seconds = median_time(
                lambda m=module, o=optimizer, b=batch, r=reps: [_train_step(m, o, b) for _ in range(r)],
                repeats=2 if small else 3,
            )
            rate = n * reps / seconds
            out[f"{name}/{stage}/train_images_per_s"] = rate
            out[f"{name}/{stage}/gflop_per_image"] = flops / n / 1e9
            out[f"{name}/{stage}/efficiency"] = flops * reps / seconds / peak
    return out


# -- framework overhead --------------------------------------------------------------------------------------
class _Batches(torch.utils.data.Dataset):
    def __init__(self, batch: dict[str, Any]) -> None:
        self.images, self.targets = batch["image"], batch["target"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "target": self.targets[i]}


def overhead_section(cfg: Any, steps: int, rounds: int = 7) -> dict[str, float]:
    """The demo grader through ``Trainer.fit`` vs the plain loop a user would write, on the same data and steps:
    the median of ``rounds`` paired ratios, and how much either side's time varied across rounds (the noise the
    ratio has to be read against)."""
    from lumbar_lightning.engine.fold import build_modules

    batch_size = int(cfg.model.grade.batch_size)
    data = stage_inputs(cfg, "grade", build_modules(cfg)["grade"], batch_size * steps)
    loader = torch.utils.data.DataLoader(_Batches(data), batch_size=batch_size, shuffle=False)

    def fresh() -> PatchClassifier:
        torch.manual_seed(0)
        module = build_modules(cfg)["grade"]
        module.scheduler_factory = None  # the plain loop has no scheduler either
        return module

    def plain() -> None:
        module = fresh().train()
        optimizer = module.configure_optimizers()
        for batch in loader:
            _train_step(module, optimizer, batch)

    def lightning() -> None:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(fresh(), train_dataloaders=loader)

    t_plain, t_fit, ratio = ab_rounds(plain, lightning, rounds)
    return {
        "overhead/plain_seconds": statistics.median(t_plain),
        "overhead/fit_seconds": statistics.median(t_fit),
        "overhead/fit_over_plain": ratio,
        "overhead/ratio_spread": (max(t_fit) / min(t_fit) + max(t_plain) / min(t_plain)) / 2 - 1,
    }


# -- data path ------------------------------------------------------------------------------------------------
def grade_patches(root: Path, cache: Path, cfg: Any, workers: int | None = None) -> Any:
    """The demo grader's training patches (8 batches an epoch), augmented as ``cfg`` says."""
    from lumbar_lightning.data.datamodules import PatchDataModule
    from lumbar_lightning.engine.fold import stage_geometry

    dm = PatchDataModule(
        task="grade",
        patch=stage_geometry(cfg, "grade"),
        data_dir=str(root),
        cache_dir=str(cache),
        num_folds=4,
        batch_size=int(cfg.model.grade.batch_size),
        num_workers=int(cfg.data.num_workers) if workers is None else workers,
        augment=hydra.utils.instantiate(cfg.data.augment),
        samples_per_epoch=int(cfg.model.grade.batch_size) * 8,
        series_reference=bool(cfg.model.grade.module.get("series_reference", False)),
    )
    dm.setup()
    return dm


def data_section(root: Path, cache: Path, cfg: Any, model_rate: float) -> dict[str, float]:
    out: dict[str, float] = {}
    ds = LumbarDataset.ingest(root, cache)
    dm = grade_patches(root, cache, cfg)
    loader = dm.train_dataloader()
    count = sum(len(b["target"]) for b in loader)
    seconds = median_time(lambda: [None for _ in loader], repeats=3)
    out["data/loader_images_per_s"] = count / seconds
    out["data/model_images_per_s"] = model_rate
    out["data/loader_over_model"] = out["data/loader_images_per_s"] / model_rate

    # What a user would otherwise write: the same items, order, augmentation and batches, but each item read
    # from its DICOM file every epoch (decode, normalise, crop) instead of from patches cut once from the cache.
    naive = NaiveDicomPatches(dm, ds.images.set_index("sop_instance_uid")["path"])
    naive_loader = torch.utils.data.DataLoader(
        naive, batch_size=loader.batch_size, sampler=dm.sampler("train"), num_workers=loader.num_workers
    )
    t_ours, t_naive = ab_medians(lambda: [None for _ in loader], lambda: [None for _ in naive_loader])
    out["data/naive_dcmread_images_per_s"] = count / t_naive
    out["data/cached_over_naive"] = t_naive / t_ours
    return out


#: The augmentation presets compared, each with the loader's worker processes.
AUGMENT_CASES = (("cv2_warp", 0), ("albumentations", 0), ("albumentations", 2))


def augment_section(root: Path, cache: Path, model_rate: float, small: bool) -> dict[str, float]:
    """Each augmentation preset (``data/augment=...``) on the demo grader's cached patches: the loader alone
    against the model's consumption, and whole training steps (load, augment, forward, backward, Adam) against
    the cv2 warp's, so workers that only move the cost onto the cores training already uses show as no gain."""
    from lumbar_lightning.engine.fold import build_modules

    out: dict[str, float] = {}
    base: float | None = None
    for name, workers in AUGMENT_CASES:
        cfg = preset("demo", f"data/augment={name}")
        loader = grade_patches(root, cache, cfg, workers=workers).train_dataloader()
        count = sum(len(b["target"]) for b in loader)
        module = build_modules(cfg)["grade"].train()
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-5)

        def train_epoch(
            loader: Any = loader, module: StageModule = module, optimizer: torch.optim.Optimizer = optimizer
        ) -> None:
            for batch in loader:
                _train_step(module, optimizer, batch)

        key = f"data/augment/{name}" + (f"_{workers}_workers" if workers else "")
        load = median_time(lambda loader=loader: [None for _ in loader])
        out[f"{key}/loader_over_model"] = count / load / model_rate
        seconds = median_time(train_epoch, repeats=1 if small else 3)
        out[f"{key}/train_images_per_s"] = count / seconds
        base = base or seconds
        out[f"{key}/train_seconds_over_cv2_warp"] = seconds / base
    return out


class NaiveDicomPatches(torch.utils.data.Dataset):
    """The training patches as a naive dataset reads them: ``pydicom.dcmread`` per item, every epoch."""

    def __init__(self, dm: Any, paths: Any) -> None:
        self.rows, self.paths, self.targets = dm.rows["train"], paths, dm.targets(dm.rows["train"])
        self.augment, self.geometry, self.seed = dm.sets["train"].augment, dm.geometry, dm.sets["train"].seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, aug_seed = item_seed(self.seed, key)
        r = self.rows.iloc[i]
        ds = pydicom.dcmread(self.paths[r["sop_instance_uid"]])
        image = normalise(decode_pixels(ds)).astype(np.float32)
        box = np.array([r["x_min"], r["y_min"], r["x_max"], r["y_max"]], dtype=np.float32)
        patch = self.geometry.crop(image, box, 1.35, pixel_mm=float(ds.PixelSpacing[1]))
        if self.augment is not None:
            patch = self.augment(patch, aug_seed, out_size=self.geometry.size)[0]
        else:
            patch = self.geometry.center_crop(patch)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(patch))[None],
            "target": int(self.targets[i]),
        }


# -- inference ------------------------------------------------------------------------------------------------
def inference_section(
    presets: dict[str, Any], study: list[np.ndarray], spacing: list[float]
) -> dict[str, float]:
    """Pipeline latency for one study (untrained weights: the work per slice is the same as trained)."""
    from lumbar_lightning.engine.fold import (
        build_modules,
        detector_box_choice,
        grade_shift_tta_mm,
        stage_geometry,
    )
    from lumbar_lightning.inference.pipeline import Pipeline

    out: dict[str, float] = {}
    for name, cfg in presets.items():
        m = build_modules(cfg)
        pipeline = Pipeline(
            m["detector"].eval().predictor,
            m["rootlet"].eval().predictor,
            m["grade"].eval().predictor,
            stage_geometry(cfg, "rootlet"),
            batch_size=int(cfg.data.eval_batch_size),
            grade_patch=stage_geometry(cfg, "grade"),
            box_choice=detector_box_choice(cfg),
            grade_shift_tta_mm=grade_shift_tta_mm(cfg),
        )
        seconds = median_time(
            lambda p=pipeline: p.predict(study, pixel_mm=spacing), repeats=3 if name == "demo" else 1
        )
        out[f"inference/{name}/seconds_per_study"] = seconds * 40 / len(study)
    out["inference/peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -- GPU ------------------------------------------------------------------------------------------------------
def gpu_section(cfg: Any) -> dict[str, float]:
    """Paper preset images/s per stage on CUDA: fp32, bf16 autocast, and bf16 + channels_last."""
    from lumbar_lightning.engine.fold import build_modules

    out: dict[str, float] = {"gpu/device": torch.cuda.get_device_name()}  # type: ignore[dict-item]
    modules = build_modules(cfg)
    for stage in STAGES:
        for mode in ("fp32", "bf16", "bf16_channels_last"):
            module = modules[stage].cuda().train()
            if mode.endswith("channels_last"):
                module = module.to(memory_format=torch.channels_last)
            batch = _to_cuda(stage_inputs(cfg, stage, module), channels_last=mode.endswith("channels_last"))
            optimizer = torch.optim.Adam(module.parameters(), lr=1e-5)

            def step(
                m: StageModule = module,
                o: torch.optim.Optimizer = optimizer,
                b: dict = batch,
                bf16: bool = mode != "fp32",
            ) -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    for _ in range(10):
                        _train_step(m, o, b)
                torch.cuda.synchronize()

            out[f"gpu/{stage}/{mode}/train_images_per_s"] = (
                10 * len(batch["image"]) / median_time(step, repeats=3, warmup=2)
            )
    return out


def _to_cuda(batch: dict[str, Any], channels_last: bool) -> dict[str, Any]:
    def move(x: Any) -> Any:
        if isinstance(x, list):
            return [move(v) for v in x]
        x = x.cuda()
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x

    return {k: move(v) for k, v in batch.items()}


# -- numerics: pinned vs native ------------------------------------------------------------------------------
def numerics_workload(steps: int) -> float:
    """Seconds for ``steps`` demo training steps of each stage, one thread (what a CV worker runs)."""
    from lumbar_lightning.engine.fold import build_modules

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cfg = preset("demo")
    modules = build_modules(cfg)
    total = 0.0
    for stage in STAGES:
        module = modules[stage]
        module.train()
        batch = stage_inputs(cfg, stage, module)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
        _train_step(module, optimizer, batch)
        total += median_time(
            lambda m=module, o=optimizer, b=batch: _train_step(m, o, b), repeats=steps, warmup=0
        )
    return total


def numerics_section(steps: int, rounds: int) -> dict[str, float]:
    """The demo's training steps in fresh processes, ``LUMBAR_NUMERICS=pinned`` against ``native``, in
    order-alternating pairs; the time ratio pinned/native (above 1: pinning costs that much)."""
    import os
    import subprocess

    def seconds(mode: str) -> float:
        code = (
            f"from lumbar_lightning.engine.bench import numerics_workload; print(numerics_workload({steps}))"
        )
        env = {**os.environ, "LUMBAR_NUMERICS": mode}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        return float(done.stdout.strip().splitlines()[-1])

    pinned, native = [], []
    for i in range(rounds):
        order = ("pinned", "native") if i % 2 == 0 else ("native", "pinned")
        for mode in order:
            (pinned if mode == "pinned" else native).append(seconds(mode))
    ratios = [p / n for p, n in zip(pinned, native, strict=True)]
    return {
        "numerics/pinned_step_seconds": statistics.median(pinned),
        "numerics/native_step_seconds": statistics.median(native),
        "numerics/pinned_over_native": statistics.median(ratios),
    }


# -- the run --------------------------------------------------------------------------------------------------
def run(small: bool = False) -> dict[str, Any]:
    """Every section; ``small`` shrinks sizes for the smoke test (numbers then mean nothing)."""
    warnings.filterwarnings("ignore")
    presets = {"demo": preset("demo"), "paper": preset("paper_a1")}
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    peak = gemm_peak_flops(512 if small else 2048, repeats=2 if small else 7)
    out["gemm_fp32_gflop_per_s"] = peak / 1e9
    out.update(compute_section(presets, peak, steps=1 if small else 5, small=small))
    out.update(overhead_section(presets["demo"], steps=4 if small else 240, rounds=2 if small else 7))
    out.update(numerics_section(steps=1 if small else 5, rounds=1 if small else 5))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ph"
        config = PhantomConfig(n_patients=4 if small else 10, image_size=96 if small else 320, seed=3)
        cohort = PhantomCohort.generate(config, root)
        out["phantom/slices_per_s"] = cohort.n_images / cohort.seconds
        first = _timed(lambda: LumbarDataset.ingest(root, Path(tmp) / "cache"))
        cached = median_time(lambda: LumbarDataset.ingest(root, Path(tmp) / "cache"))
        out["ingest/first_pass_images_per_s"] = cohort.n_images / first
        out["ingest/cached_images_per_s"] = cohort.n_images / cached
        model_rate = out["demo/grade/train_images_per_s"]
        out.update(data_section(root, Path(tmp) / "cache", presets["demo"], model_rate))
        out.update(augment_section(root, Path(tmp) / "cache", model_rate, small))
        ds = LumbarDataset.ingest(root, Path(tmp) / "cache")
        patient = ds.images[ds.images["patient"] == ds.images["patient"].iloc[0]]
        uids = (list(patient["sop_instance_uid"]) * 40)[: 4 if small else 40]
        study = [ds.cache.get(u) for u in uids]
        spacing = [float(ds.pixel_spacing[u]) for u in uids]
        out.update(inference_section({"demo": presets["demo"]} if small else presets, study, spacing))
    if torch.cuda.is_available() and not small:
        out.update(gpu_section(presets["paper"]))
    out["targets"] = {
        k: {"rule": f"{op} {v}", "value": out.get(k), "met": _met(out.get(k), op, v)}
        for k, (op, v) in TARGETS.items()
    }
    return out


def _met(value: Any, op: str, target: float) -> bool | None:
    if not isinstance(value, int | float):
        return None
    return value >= target if op == ">=" else value <= target


def print_table(result: dict[str, Any]) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        if key == "targets":
            continue
        print(
            f"{key:<{width}}  {value:>12.3f}" if isinstance(value, float) else f"{key:<{width}}  {value:>12}"
        )
    print("\ntargets:")
    for key, t in result["targets"].items():
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        value = f"{t['value']:.3f}" if isinstance(t["value"], float) else t["value"]
        print(f"  {key:<36} {t['rule']:>8}  {value:>10}  {mark}")


def markdown_block(result: dict[str, Any]) -> str:
    """The result as a README block (between the record markers), so recorded figures are never typed in."""
    from lumbar_lightning.evaluation.record import BEGIN, END

    lines = [
        BEGIN,
        "",
        f"torch {result['torch']}, {result['threads']} threads"
        + (f", {result['gpu/device']}" if "gpu/device" in result else ", no GPU section (no CUDA)"),
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key, value in result.items():
        if key not in ("targets", "torch", "threads"):
            lines.append(f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "| target | rule | value | met |", "|---|---|---|---|"]
    for key, t in result["targets"].items():
        value = f"{t['value']:.3f}" if isinstance(t["value"], float) else t["value"]
        lines.append(f"| {key} | {t['rule']} | {value} | {t['met']} |")
    return "\n".join([*lines, "", END])
