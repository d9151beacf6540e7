"""The RSNA 2024 adapter: a replica in the download's layout, its ingestion into the data contract, every malformed
case reported by file and row while the rest is used, and the round trip synth -> ingest -> CV in the RSNA scheme."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from wandb_offline import offline_runs

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.rsna2024 import layout
from lumbar_lightning.data.rsna2024.ingest import ingest_rsna2024

REPLICA_STUDIES = 8


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small replica: 8 studies of the tiny phantom's geometry, written as the challenge ships its data."""
    from lumbar_lightning.data.phantom.cohort import PhantomConfig
    from lumbar_lightning.data.rsna2024.replica import write_replica
    from tests.conftest import TINY_PHANTOM

    root = tmp_path_factory.mktemp("rsna_replica")
    counts = write_replica(PhantomConfig(**{**TINY_PHANTOM, "n_patients": REPLICA_STUDIES}), root, workers=2)
    assert counts["studies"] == REPLICA_STUDIES and counts["labelled_levels"] >= 3 * REPLICA_STUDIES
    return root


def _copy(replica: Path, tmp_path: Path) -> Path:
    """The replica's CSVs copied (to edit), its images linked."""
    src = tmp_path / "download"
    src.mkdir()
    for name in (layout.TRAIN_CSV, layout.COORDINATES_CSV, layout.SERIES_CSV):
        shutil.copy(replica / name, src / name)
    (src / layout.IMAGES_DIR).symlink_to(replica / layout.IMAGES_DIR)
    return src


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_the_replica_has_the_published_layout(replica: Path) -> None:
    train = pd.read_csv(replica / layout.TRAIN_CSV)
    assert list(train.columns) == ["study_id", *layout.LABEL_COLUMNS] and len(layout.LABEL_COLUMNS) == 25
    values = set(train[list(layout.LABEL_COLUMNS)].stack().dropna())
    assert values <= set(layout.CLASSES) and "Normal/Mild" in values
    series = pd.read_csv(replica / layout.SERIES_CSV)
    assert set(series["series_description"]) == {layout.AXIAL_T2, layout.SAGITTAL_T2}
    coords = pd.read_csv(replica / layout.COORDINATES_CSV)
    assert set(coords["condition"]) == {layout.CANAL, layout.LEFT_SUBARTICULAR, layout.RIGHT_SUBARTICULAR}
    # the canal points lie on the sagittal series, the subarticular ones on the axial, each file where it says
    kinds = coords.merge(series, on=["study_id", "series_id"])
    assert (kinds.loc[kinds["condition"] == layout.CANAL, "series_description"] == layout.SAGITTAL_T2).all()
    for r in coords.itertuples():
        assert (
            replica / layout.IMAGES_DIR / str(r.study_id) / str(r.series_id) / f"{r.instance_number}.dcm"
        ).is_file()


def test_ingest_makes_a_data_contract_folder_of_links_in_the_rsna_scheme(
    replica: Path, tmp_path: Path
) -> None:
    from lumbar_lightning.data.dataset import LumbarDataset
    from lumbar_lightning.data.grading import grading, preset

    out = tmp_path / "contract"
    result = ingest_rsna2024(replica, out, box_mm=(22.0, 22.0))
    assert result.problems == [] and result.studies == REPLICA_STUDIES
    coords = pd.read_csv(replica / layout.COORDINATES_CSV)
    assert len(result.labels) == (coords["condition"] == layout.LEFT_SUBARTICULAR).sum()
    linked = [p for p in (out / "dicom").rglob("*.dcm")]
    assert linked and all(p.is_symlink() for p in linked)  # no pixel copied
    labels = pd.read_csv(out / "labels.csv", keep_default_na=False)
    assert set(labels["grade"]) <= set(layout.CLASSES) and set(labels["level"]) == {"rootlet"}
    width_px = labels["x_max"] - labels["x_min"]
    assert width_px.round(1).eq(round(22.0 / 1.72, 1)).mean() > 0.9  # 22 mm at the tiny phantom's 1.72 mm
    # the box is centred between the two points
    first = coords[coords["condition"] == layout.LEFT_SUBARTICULAR].iloc[0]
    right = coords[
        (coords["condition"] == layout.RIGHT_SUBARTICULAR)
        & (coords["study_id"] == first.study_id)
        & (coords["level"] == first.level)
    ].iloc[0]
    row = labels[labels["vertebral_level"] == first.level].iloc[0]
    assert (row.x_min + row.x_max) / 2 == pytest.approx((first.x + right.x) / 2, abs=0.02)
    assert json.loads((out / "dataset.json").read_text())["grading"] == "rsna"
    # read under the Schizas scheme: one sentence naming the scheme to use, not thousands of rejected rows
    with pytest.raises(DataContractError, match="grading=rsna"):
        LumbarDataset.ingest(out)
    with grading(preset("rsna")):
        dataset = LumbarDataset.ingest(out)
    assert len(dataset.labels.rows) == len(labels) and dataset.labels.raters == ["A1"]


def test_every_malformed_case_is_reported_by_file_and_row_and_the_rest_is_used(
    replica: Path, tmp_path: Path
) -> None:
    src = _copy(replica, tmp_path)
    coords = _rows(src / layout.COORDINATES_CSV)
    good = sum(r["condition"] == layout.LEFT_SUBARTICULAR for r in coords)
    left = [i for i, r in enumerate(coords) if r["condition"] == layout.LEFT_SUBARTICULAR]
    coords[left[0]]["condition"] = "Central Canal Narrowing"  # an unknown condition name
    coords[left[1]]["x"] = "5000"  # a point outside the image
    coords.append(dict(coords[left[2]]))  # a duplicated row (the original is still used)
    coords[left[3]]["instance_number"] = "999"  # an instance that is not there
    axial_study = coords[left[4]]["study_id"]
    _write(src / layout.COORDINATES_CSV, coords)
    series = _rows(src / layout.SERIES_CSV)
    # a study with no axial T2: its axial series described as sagittal, so its points lie on a non-axial series
    for r in series:
        if r["study_id"] == axial_study and r["series_description"] == layout.AXIAL_T2:
            r["series_description"] = layout.SAGITTAL_T1
    _write(src / layout.SERIES_CSV, series)
    train = _rows(src / layout.TRAIN_CSV)
    unlabelled_study, unlabelled_level = coords[left[5]]["study_id"], coords[left[5]]["level"]
    if unlabelled_study == axial_study:
        unlabelled_study, unlabelled_level = coords[left[-1]]["study_id"], coords[left[-1]]["level"]
    for r in train:
        if r["study_id"] == unlabelled_study:
            r[layout.label_column(layout.CANAL, unlabelled_level)] = ""  # an unlabelled level
    _write(src / layout.TRAIN_CSV, train)

    result = ingest_rsna2024(src, tmp_path / "out")
    reasons = [(p.file, p.line, p.reason) for p in result.problems]
    text = "\n".join(f"{f}:{line}: {r}" for f, line, r in reasons)
    coord_line = {i: i + 2 for i in range(len(coords))}  # header is line 1
    assert (
        f"{layout.COORDINATES_CSV}:{coord_line[left[0]]}: unknown condition 'Central Canal Narrowing'" in text
    )
    assert f"{layout.COORDINATES_CSV}:{coord_line[left[1]]}: point (5000," in text
    assert f"{layout.COORDINATES_CSV}:{len(coords) + 1}: duplicate of line {coord_line[left[2]]}" in text
    assert f"{layout.COORDINATES_CSV}:{coord_line[left[3]]}: instance not found" in text
    assert f"study {axial_study} has no Axial T2 series" in text
    assert "must lie on an Axial T2 slice" in text
    assert f"study {unlabelled_study} {unlabelled_level}: unlabelled level" in text
    # the rest is still used: every other level of every other study
    axial_levels = sum(
        r["condition"] == layout.LEFT_SUBARTICULAR and r["study_id"] == axial_study for r in coords
    )
    assert good - 5 - axial_levels <= len(result.labels) < good
    report = json.loads((tmp_path / "out" / "rsna_ingest_report.json").read_text())
    assert len(report["problems"]) == len(result.problems) and report["labelled_levels"] == len(result.labels)


def test_a_missing_csv_stops_with_its_name(replica: Path, tmp_path: Path) -> None:
    src = _copy(replica, tmp_path)
    (src / layout.COORDINATES_CSV).unlink()
    with pytest.raises(DataContractError, match=r"train_label_coordinates\.csv: not found"):
        ingest_rsna2024(src, tmp_path / "out")
    (tmp_path / "b").mkdir()
    src2 = _copy(replica, tmp_path / "b")
    rows = _rows(src2 / layout.TRAIN_CSV)
    _write(
        src2 / layout.TRAIN_CSV,
        [{k: v for k, v in r.items() if k != "spinal_canal_stenosis_l4_l5"} for r in rows],
    )
    with pytest.raises(
        DataContractError, match=r"train\.csv: line 1: missing column.*spinal_canal_stenosis_l4_l5"
    ):
        ingest_rsna2024(src2, tmp_path / "out2")


def test_round_trip_synth_ingest_cv_reports_in_the_rsna_scheme(replica: Path, tmp_path: Path) -> None:
    """lumbar-ingest format=rsna2024 then a one-rater CV in grading=rsna with stages=[detector, grade]:
    single-rater tables (no A1-A2), the three classes everywhere, the weighted log loss beside accuracy, F1 and
    kappa, no rootlet stage trained or reported, and lumbar-predict grading every slice of a study."""
    import subprocess
    import sys

    from tests.conftest import TINY_CV

    out = tmp_path / "contract"
    ingest = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.ingest",
        "format=rsna2024",
        f"source={replica}",
        f"data_dir={out}",
        f"hydra.run.dir={tmp_path / 'ingest'}",
    ]
    subprocess.run(ingest, check=True, capture_output=True)
    assert (out / "labels.csv").is_file()
    cv = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.cv",
        f"data_dir={out}",
        "grading=rsna",
        "cv.raters=[A1]",
        "stages=[detector,grade]",
        "cv.folds=[0]",
        "logger=wandb",
        "threads=1",
        *TINY_CV,
        f"hydra.run.dir={tmp_path / 'cv'}",
    ]
    subprocess.run(cv, check=True, capture_output=True)
    runs = offline_runs(tmp_path / "cv")  # W&B offline: the grade tables alone, in the challenge's classes
    assert not any("rootlet" in name for name in runs) and {"A1-grade-fold0", "cv-summary"} <= set(runs)
    logged = set().union(*runs["cv-summary"]["history"])
    assert any(k.startswith("study/grade") for k in logged) and not any("rootlet" in k for k in logged)
    headline = runs["cv-summary"]["summary"]
    assert 0 < headline["grade/A1-C1/accuracy"] <= 1 and "grade/A1-C1/kappa_quadratic" in headline
    assert not any(k.startswith("rootlet/") for k in headline)
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert "A1-A2" not in summary["grade"] and "A1-C1" in summary["grade"]
    row = summary["grade"]["A1-C1"]
    assert row["classes"] == list(layout.CLASSES)
    assert set(row["recall_per_class"]) == set(layout.CLASSES)
    assert 0 < row["weighted_log_loss"] < 10
    report = (tmp_path / "cv" / "report.md").read_text()
    assert "recall Severe %" in report and "Weighted log loss" in report and "recall D %" not in report
    assert "## Rootlet / cord" not in report and summary["rootlet"] == {}
    fold = tmp_path / "cv" / "A1" / "fold_0"
    assert not (fold / "checkpoints" / "rootlet").exists() and (fold / "checkpoints" / "grade").is_dir()
    study = next((replica / layout.IMAGES_DIR).iterdir())
    axial = next(d for d in study.iterdir() if d.name.endswith("3"))
    predict = [
        sys.executable,
        "-m",
        "lumbar_lightning.cli.predict",
        f"run_dir={tmp_path / 'cv'}",
        f"input={axial}",
        f"hydra.run.dir={tmp_path / 'predict'}",
    ]
    subprocess.run(predict, check=True, capture_output=True)
    predictions = pd.read_csv(tmp_path / "predict" / "predictions.csv", keep_default_na=False)
    assert (
        len(predictions) == len(list(axial.glob("*.dcm"))) and (predictions["pred_level"] == "rootlet").all()
    )
    assert set(predictions["pred_grade"]) <= set(layout.CLASSES) and "p_Severe" in predictions


@pytest.mark.parametrize(
    ("stages", "message"),
    [("[detector,rootlet]", "at least the detector and the grade"), ("[detector,grade,x]", "unknown")],
)
def test_stages_name_what_the_pipeline_can_run(stages: str, message: str) -> None:
    from lumbar_lightning.engine.fold import run_stages
    from tests.conftest import tiny_cv_config

    assert run_stages(tiny_cv_config()) == ("detector", "rootlet", "grade")
    assert run_stages(tiny_cv_config("stages=[grade,detector]")) == ("detector", "grade")
    with pytest.raises(DataContractError, match=message):
        run_stages(tiny_cv_config(f"stages={stages}"))
