from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd


def _ingest(*overrides: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lumbar_lightning.cli.ingest", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_ingest_writes_report_and_folds(tiny_dataset: Path, tmp_path: Path) -> None:
    (tiny_dataset / "dicom" / "junk.dcm").write_bytes(b"\x00" * 50)
    with (tiny_dataset / "labels.csv").open("a") as fh:
        fh.write("A2,9.9.9,1,1,5,5,rootlet,A,\n")
    out = tmp_path / "run"
    result = _ingest(f"data_dir={tiny_dataset}", f"hydra.run.dir={out}", "num_folds=4")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["images"] == 48 and report["patients"] == 12
    assert report["skipped_files"] == [
        {"path": "junk.dcm", "reason": report["skipped_files"][0]["reason"]}  # relative to <dataset>/dicom
    ]
    assert "not a DICOM file" in report["skipped_files"][0]["reason"]
    assert report["labels"]["A1"] == {"accepted": 48, "rejected": []}
    assert report["labels"]["A2"]["accepted"] == 48
    assert report["labels"]["A2"]["rejected"][0]["line"] == 98
    assert "unknown image" in report["labels"]["A2"]["rejected"][0]["reason"]
    folds = pd.read_csv(out / "folds.csv")
    assert len(folds) == 12 and sorted(folds["part"].unique()) == [0, 1, 2, 3]
    assert not folds["patient"].str.contains("PAT").any()  # pseudonyms only
    assert "PAT0" not in (out / "ingest_report.json").read_text()
    # Second pass is served from the cache.
    again = _ingest(f"data_dir={tiny_dataset}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "run2" / "ingest_report.json").read_text())["cached_files"] == 49


def test_no_readable_image_is_one_sentence_and_nonzero(tmp_path: Path) -> None:
    ds = tmp_path / "empty"
    (ds / "dicom").mkdir(parents=True)
    (ds / "dicom" / "a.dcm").write_text("nope")
    (ds / "labels.csv").write_text("analyzer,sop_instance_uid,x_min,y_min,x_max,y_max,level,grade\n")
    result = _ingest(f"data_dir={ds}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no readable image under")
    assert "Traceback" not in result.stderr + result.stdout


def test_no_valid_label_is_one_sentence_and_nonzero(tiny_dataset: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_dataset / "labels.csv", tmp_path / "orig.csv")
    lines = (tiny_dataset / "labels.csv").read_text().splitlines()
    bad = [lines[0]] + [
        line.replace(",rootlet,", ",lumbar,").replace(",cord,", ",lumbar,") for line in lines[1:]
    ]
    (tiny_dataset / "labels.csv").write_text("\n".join(bad) + "\n")
    result = _ingest(f"data_dir={tiny_dataset}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "has no valid label row (96 rejected)" in result.stderr
    assert "Traceback" not in result.stderr
