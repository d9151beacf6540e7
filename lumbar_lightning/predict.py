"""``lumbar-predict run_dir=DIR input=PATH out_dir=DIR``: the trained pipeline on a DICOM folder of any layout.

Per study, the axial T2 series is chosen (``data/series.py``) and every slice goes through detector, rootlet
classifier and grader, with one fold's checkpoints or the mean of several folds' (an ensemble). Writes
``predictions.csv`` (per image), ``summary.csv`` (worst grade per study and vertebral level), ``series.csv`` (which
series each study used, and why the others were not), ``skipped.csv`` and overlay PNGs.

Models are rebuilt from a fixed list of classes and the checkpoints' plain hyperparameters, loaded with
``weights_only=True``: nothing from the run folder is imported or executed.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from lumbar_lightning.cli import CONF_PATH, exit_on_contract_error, log, output_dir
from lumbar_lightning.data.dicom import ImageCache, scan_dicom
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.labels import GRADES
from lumbar_lightning.data.series import select_series
from lumbar_lightning.data.transforms import PatchGeometry
from lumbar_lightning.io import atomic_write_text
from lumbar_lightning.models.stages import CanalDetector, GradeClassifier, RootletClassifier, StageModule
from lumbar_lightning.pipeline import Pipeline, Prediction, load_stage_weights

#: The only classes a run folder may name.
STAGE_CLASSES: dict[str, type[StageModule]] = {
    "detector": CanalDetector,
    "rootlet": RootletClassifier,
    "grade": GradeClassifier,
}
#: Hyperparameters that a checkpoint may legitimately hold differently from the run's record of its config.
_RUNTIME_HPARAMS = {"class_prior", "pretrained"}
#: Disc levels from the sacrum up, for levels estimated from slice position.
LEVELS_FROM_BOTTOM = ("L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2", "T12/L1")


def fold_dirs(run_dir: Path, rater: str, fold: int | None) -> list[Path]:
    """A fold folder itself, or the fold folders of a ``lumbar-cv``/``lumbar-train`` run folder for ``rater``."""
    run_dir = Path(run_dir)
    if (run_dir / "pipeline.json").is_file():
        return [run_dir]
    found = sorted(
        run_dir.glob(f"{rater}/fold_*/pipeline.json"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    dirs = [p.parent for p in found if fold is None or p.parent.name == f"fold_{fold}"]
    if not dirs:
        what = f"fold {fold} of rater {rater}" if fold is not None else f"any fold of rater {rater}"
        raise DataContractError(
            f"{run_dir}: no trained {what} (a fold folder holds pipeline.json and checkpoints/)"
        )
    return dirs


def load_fold_pipeline(fold_dir: Path, device: str = "cpu", batch_size: int | None = None) -> Pipeline:
    """The three stages of one trained fold, from ``pipeline.json`` and the best checkpoints."""
    spec = json.loads((fold_dir / "pipeline.json").read_text())
    modules: dict[str, StageModule] = {}
    for stage, cls in STAGE_CLASSES.items():
        recorded = spec["stages"][stage]
        if recorded["class"] != cls.__name__:
            raise DataContractError(f"{fold_dir / 'pipeline.json'}: stage {stage} is a {recorded['class']!r}; "
                                    f"only {cls.__name__} is accepted")  # fmt: skip
        ckpt_path = fold_dir / "checkpoints" / stage / "best.ckpt"
        if not ckpt_path.is_file():
            raise DataContractError(f"{ckpt_path}: checkpoint missing")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        differ = {
            k: (hparams.get(k), v)
            for k, v in recorded["hparams"].items()
            if k not in _RUNTIME_HPARAMS and _plain(hparams.get(k)) != _plain(v)
        }
        if differ:
            text = ", ".join(f"{k}={a!r} (run config: {b!r})" for k, (a, b) in sorted(differ.items()))
            raise DataContractError(f"{ckpt_path} was trained with another model config: {text}")
        if "pretrained" in hparams:
            hparams["pretrained"] = None  # the weights come from the checkpoint, never from a path it names
        module = cls(**hparams)
        try:
            load_stage_weights(module, ckpt_path)
        except ValueError as exc:
            raise DataContractError(str(exc)) from None
        modules[stage] = module
    geometry = {s: PatchGeometry(**g) for s, g in spec["geometry"].items()}
    return Pipeline(modules["detector"], modules["rootlet"], modules["grade"], geometry["rootlet"],  # type: ignore[arg-type]
                    batch_size=batch_size or spec["batch_size"], device=device, grade_patch=geometry["grade"])  # fmt: skip


def _plain(value: Any) -> Any:
    """Compare hyperparameters as JSON would store them (tuples and lists alike)."""
    return json.loads(json.dumps(value, default=str))


@dataclass
class Ensemble:
    """Several folds' pipelines; boxes and probabilities averaged over them, then level and grade decided."""

    pipelines: list[Pipeline]

    def predict(self, images: list[np.ndarray], pixel_mm: list[float], **kwargs: Any) -> list[Prediction]:
        """``kwargs``: ``Pipeline.predict``'s ``boxes`` and ``series``, passed to every fold."""
        if len(self.pipelines) == 1:
            return self.pipelines[0].predict(images, pixel_mm=pixel_mm, **kwargs)
        per_fold = [p.predict(images, pixel_mm=pixel_mm, **kwargs) for p in self.pipelines]
        return [
            Prediction.decide(
                np.mean([p.box for p in preds], axis=0),
                float(np.mean([p.box_score for p in preds])),
                float(np.mean([p.rootlet_prob for p in preds])),
                np.mean([p.grade_probs for p in preds], axis=0),
                np.mean([p.grade_probs_balanced for p in preds], axis=0),
            )
            for preds in zip(*per_fold, strict=True)
        ]


def estimated_levels(positions: np.ndarray, segment_mm: float, offset: float = 0.25) -> list[str]:
    """Disc level of each slice from its position along the slice normal, counting up from the lowest slice in
    steps of ``segment_mm``, the lowest slice taken ``offset`` segments into L5/S1's zone (a protocol that ends at
    S1). An estimate (88% of the phantom's labelled slices at 36 mm / 0.25): pass ``levels=`` for known levels."""
    bottom = float(np.nanmin(positions))
    index = np.floor((positions - bottom) / segment_mm + offset).astype(int)
    return [LEVELS_FROM_BOTTOM[i] if 0 <= i < len(LEVELS_FROM_BOTTOM) else "above T12/L1" for i in index]


def worst_grade_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per study and vertebral level: slices, rootlet slices, and the worst (most severe) predicted grade."""
    rank = {g: i for i, g in enumerate(GRADES)}
    rows = []
    for (patient, series, level), part in frame.groupby(["patient", "series_instance_uid", "vertebral_level"],
                                                        sort=False):  # fmt: skip
        graded = part[part["pred_grade"] != ""]
        worst = max(graded["pred_grade"], key=rank.__getitem__) if len(graded) else ""
        rows.append({"patient": patient, "series_instance_uid": series, "vertebral_level": level,
                     "level_source": part["level_source"].iloc[0], "slices": len(part),
                     "rootlet_slices": int((part["pred_level"] == "rootlet").sum()), "worst_grade": worst,
                     "worst_grade_slice": int(graded.loc[graded["pred_grade"] == worst, "slice_index"].iloc[0])
                     if worst else -1})  # fmt: skip
    return pd.DataFrame(rows)


def overlay_png(image: np.ndarray, row: dict[str, Any], path: Path) -> None:
    """The slice with the detected canal box, the level and the grade written on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(3.2, 3.4), dpi=100)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    x0, y0, x1, y1 = (row[f"pred_{k}"] for k in ("x_min", "y_min", "x_max", "y_max"))
    colour = "#e4572e" if row["pred_grade"] in ("C", "D") else "#29c46a"
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
    label = row["pred_level"] + (f", grade {row['pred_grade']}" if row["pred_grade"] else "")
    ax.set_title(
        f"{row['patient']} slice {row['slice_index']} ({row['vertebral_level']})\n{label}", fontsize=7
    )
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def input_folder(cfg: DictConfig) -> Path:
    """``input=`` (any DICOM folder), else ``data_dir=``'s ``dicom/`` (a data set in the contract)."""
    if cfg.get("input"):
        source = Path(cfg.input)
    elif cfg.get("data_dir"):
        source = (
            Path(cfg.data_dir) / "dicom" if (Path(cfg.data_dir) / "dicom").is_dir() else Path(cfg.data_dir)
        )
    else:
        raise DataContractError("nothing to grade: give input=DICOM_FOLDER or data_dir=DATASET")
    if not source.is_dir():
        raise DataContractError(f"input {source} is not a folder")
    return source


@exit_on_contract_error
def predict(cfg: DictConfig, out_dir: Path | None = None) -> pd.DataFrame:
    """Run the pipeline on ``cfg.input``; returns the per-image predictions (also written to ``out_dir``)."""
    out = Path(cfg.out_dir) if cfg.get("out_dir") else (out_dir or output_dir())
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    folds = fold_dirs(Path(cfg.run_dir), cfg.rater, cfg.get("fold"))
    model = Ensemble([load_fold_pipeline(d, cfg.device, cfg.get("batch_size")) for d in folds])
    log.info(f"pipeline: {len(folds)} fold(s) of rater {cfg.rater}: {', '.join(d.name for d in folds)}")
    source = input_folder(cfg)
    with tempfile.TemporaryDirectory(
        prefix="lumbar-predict-"
    ) as tmp:  # decoded images; the input stays untouched
        cache = ImageCache(Path(tmp))
        index = scan_dicom(source, cache, cfg.pseudonym_salt)
        skipped = pd.DataFrame([s.as_dict(source) for s in index.skipped], columns=["path", "reason"])
        atomic_write_text(out / "skipped.csv", skipped.to_csv(index=False))
        for s in index.skipped:
            log.warning(f"skipped {s.as_dict(source)['path']}: {s.reason}")
        images, decisions = select_series(index.images)
        series = pd.DataFrame([d.as_dict() for d in decisions])
        atomic_write_text(out / "series.csv", series.to_csv(index=False))
        if images.empty:
            raise DataContractError(f"nothing to grade under {source}: {len(index.images)} readable image(s), "
                                    f"{len(index.skipped)} file(s) skipped, no axial series")  # fmt: skip
        for d in decisions:
            if d.chosen:
                log.info(
                    f"study {d.patient}: series {d.description!r} ({d.images} images) chosen: {d.reason}"
                )
            else:
                log.info(f"study {d.patient}: series {d.description!r} not used: {d.reason}")
        known = _known_levels(cfg.get("levels"))
        frames, timings = [], []
        overlays = out / "overlays"
        studies = list(images.groupby(["patient", "series_instance_uid"], sort=False))
        for (patient, series_uid), study in tqdm(
            studies, desc="studies", unit="study", disable=not cfg.progress
        ):
            start = time.perf_counter()
            pixels = [cache.get(uid) for uid in study["sop_instance_uid"]]
            preds = model.predict(pixels, pixel_mm=study["pixel_spacing_col"].astype(float).tolist())
            timings.append((len(pixels), time.perf_counter() - start))
            frame = pd.DataFrame([p.as_row() for p in preds])
            frame.insert(0, "patient", patient)
            frame.insert(1, "series_instance_uid", series_uid)
            frame.insert(2, "sop_instance_uid", [u.split("#")[0] for u in study["sop_instance_uid"]])
            frame.insert(3, "frame", study["frame"].to_numpy())
            frame.insert(4, "slice_index", np.arange(len(study)))
            frame.insert(5, "slice_position", study["slice_position"].round(3).to_numpy())
            estimated = estimated_levels(
                study["slice_position"].to_numpy(dtype=float), cfg.segment_mm, cfg.level_offset
            )
            given = [known.get(u, "") for u in study["sop_instance_uid"]]
            frame["vertebral_level"] = [g or e for g, e in zip(given, estimated, strict=True)]
            frame["level_source"] = ["labels" if g else "estimated" for g in given]
            frames.append(frame)
            if cfg.overlays:
                overlays.mkdir(exist_ok=True)
                for image, row in zip(pixels, frame.to_dict("records"), strict=True):
                    overlay_png(image, row, overlays / f"{patient}_{row['slice_index']:03d}.png")
    predictions = pd.concat(frames, ignore_index=True)
    atomic_write_text(out / "predictions.csv", predictions.to_csv(index=False))
    atomic_write_text(out / "summary.csv", worst_grade_summary(predictions).to_csv(index=False))
    n, seconds = (sum(v) for v in zip(*timings, strict=True))
    log.info(f"{len(predictions)} images of {len(studies)} studies in {seconds:.1f}s "
             f"({seconds / max(n, 1) * 40:.2f}s per 40 slices); outputs: {out}")  # fmt: skip
    return predictions


def _known_levels(path: str | None) -> dict[str, str]:
    """image key -> vertebral level, from a labels/levels CSV with ``sop_instance_uid`` and ``vertebral_level``."""
    if not path:
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"sop_instance_uid", "vertebral_level"} - set(table.columns)
    if missing:
        raise DataContractError(f"{path}: line 1: missing column(s) {', '.join(sorted(missing))}")
    keys = table["sop_instance_uid"]
    if "frame" in table.columns:
        keys = [f"{u}#{f}" if f else u for u, f in zip(keys, table["frame"], strict=True)]
    return {k: v for k, v in zip(keys, table["vertebral_level"], strict=True) if v}


@hydra.main(config_path=CONF_PATH, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
