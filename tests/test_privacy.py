"""No patient identifier leaves the DICOM files: not into a cache, report, prediction, figure, log or W&B run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from conftest import tiny_cv_config

from lumbar_lightning.data.dicom.headers import pseudonymise
from lumbar_lightning.data.phantom.cohort import PhantomCohort, PhantomConfig
from lumbar_lightning.engine.cross_validation import cross_validate

IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate")


def identifiers_in(dicom_dir: Path) -> set[str]:
    """Every identifying value the cohort's files carry, read from the files themselves."""
    found: set[str] = set()
    for path in dicom_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(ds.get(k, "")) for k in IDENTIFYING}
    found.discard("")
    return found


@pytest.fixture(scope="module")
def leak_workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A phantom with names, IDs, birth dates and accession numbers; ingestion, a tiny CV logged to W&B offline
    and lumbar-predict, everything written under one folder."""
    root = tmp_path_factory.mktemp("leak")
    data = root / "data"
    PhantomCohort.generate(
        PhantomConfig(n_patients=8, seed=11, image_size=128, pixel_spacing_mm=1.72, identifiers=True),
        data,
        workers=2,
    )
    secrets = identifiers_in(data / "dicom")
    ingest = subprocess.run(
        [
            sys.executable,
            "-m",
            "lumbar_lightning.cli.ingest",
            f"data_dir={data}",
            "num_folds=4",
            f"hydra.run.dir={root / 'ingest'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    cfg = tiny_cv_config(f"data.data_dir={data}", "logger=many", "cv.folds=[0]", "experiment_name=leak")
    cross_validate(cfg, root=root / "cv")
    study = root / "incoming" / "study1"  # a study handed over for grading (copied, as a user would)
    shutil.copytree(sorted((data / "dicom").iterdir())[0], study)
    predict = subprocess.run(
        [
            sys.executable,
            "-m",
            "lumbar_lightning.cli.predict",
            f"run_dir={root / 'cv'}",
            f"input={study.parent}",
            f"out_dir={root / 'predicted'}",
            "progress=false",
            f"hydra.run.dir={root / 'predict'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predict.returncode == 0, predict.stderr[-2000:]
    logs = root / "console.log"
    logs.write_text("\n".join(r.stdout + r.stderr for r in (ingest, predict)))
    return {"root": root, "data": data, "secrets": secrets, "inputs": [data / "dicom", root / "incoming"]}


def test_the_phantom_really_carries_identifiers(leak_workspace: dict) -> None:
    secrets = leak_workspace["secrets"]
    assert any(s.startswith("Doe^Jane") for s in secrets) and any(s.startswith("ACC") for s in secrets)
    assert any(s.startswith("PHANTOM-") for s in secrets) and "20240115" in secrets and len(secrets) >= 4 * 8


def test_no_identifier_in_any_file_written(leak_workspace: dict) -> None:
    root, secrets = leak_workspace["root"], leak_workspace["secrets"]
    needles = {s: [s.encode(), s.replace("^", " ").encode()] for s in secrets}
    written = [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(p.is_relative_to(i) for i in leak_workspace["inputs"])
    ]
    kinds = {p.suffix for p in written}
    # What was searched: caches, reports, predictions, checkpoints, figures, overlays, Hydra logs, W&B runs.
    assert {".npy", ".json", ".csv", ".ckpt", ".png", ".log", ".wandb", ".yaml", ".md"} <= kinds, kinds
    assert any("wandb" in p.parts for p in written) and any(p.parent.name == "overlays" for p in written)
    leaks = [
        (str(p.relative_to(root)), s)
        for p in written
        for s, forms in needles.items()
        if any(f in p.read_bytes() for f in forms)
    ]
    assert leaks == []


def test_pseudonyms_are_stable_and_salted(leak_workspace: dict) -> None:
    import pandas as pd

    preds = pd.read_csv(leak_workspace["root"] / "predicted" / "predictions.csv")
    patient_id = next(s for s in leak_workspace["secrets"] if s.startswith("PHANTOM-"))
    assert pseudonymise(patient_id) == pseudonymise(patient_id)
    assert pseudonymise(patient_id, "other salt") != pseudonymise(patient_id)
    first = sorted(s for s in leak_workspace["secrets"] if s.startswith("PHANTOM-"))[0]
    assert set(preds["patient"]) == {pseudonymise(first)}  # the holder of the salt can map back locally
