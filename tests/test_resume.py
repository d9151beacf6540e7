"""Exact reproduction and resumption: a fold trained twice, or killed mid-stage and resumed, gives the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from conftest import TINY_CV

from lumbar_lightning.reproduce import comparable

#: Enough grade epochs that a kill lands inside the stage.
LONGER_GRADE = ["model.grade.trainer.max_epochs=6", "model.grade.samples_per_epoch=256", "threads=1"]


def _train_cmd(data: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "lumbar_lightning.train", f"data.data_dir={data}", "logger=csv",
            f"hydra.run.dir={run_dir}", *TINY_CV, *LONGER_GRADE]  # fmt: skip


def _fold(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    out = run_dir / "A1" / "fold_0"
    metrics = json.loads((out / "metrics.json").read_text())
    return comparable(metrics), pd.read_csv(out / "predictions.csv", keep_default_na=False)


def test_killed_mid_stage_then_resumed_equals_uninterrupted(tiny_phantom: Path, tmp_path: Path) -> None:
    """Reproduction (two uninterrupted runs agree exactly) and resumption (SIGKILL inside the grade stage, the
    same command again: finished stages are reloaded, the grade stage continues from last.ckpt)."""
    reference = subprocess.run(
        _train_cmd(tiny_phantom, tmp_path / "ref"), capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_phantom, killed_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    grade = killed_dir / "A1" / "fold_0" / "checkpoints" / "grade"
    deadline = time.monotonic() + 300
    while not (grade / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (grade / "last.ckpt").exists() and not (grade / "done.json").exists(), (
        "the kill missed the grade stage"
    )
    assert not (killed_dir / "A1" / "fold_0" / "metrics.json").exists()
    epochs_before = torch.load(grade / "last.ckpt", weights_only=True)["epoch"]
    resumed = subprocess.run(
        _train_cmd(tiny_phantom, killed_dir), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = resumed.stdout + resumed.stderr
    assert "A1-rootlet-fold0: finished in an earlier run, reloaded" in log
    assert "A1-grade-fold0: resuming from" in log and epochs_before < 5
    ref_metrics, ref_preds = _fold(tmp_path / "ref")
    got_metrics, got_preds = _fold(killed_dir)
    pd.testing.assert_frame_equal(got_preds, ref_preds)
    assert got_metrics == ref_metrics
    # The fully trained weights too (the best checkpoint may predate the kill): bit for bit.
    ref_last, got_last = (torch.load(d / "A1" / "fold_0" / "checkpoints" / "grade" / "last.ckpt", weights_only=True)
                          for d in (tmp_path / "ref", killed_dir))  # fmt: skip
    assert ref_last["epoch"] == got_last["epoch"] == 5
    for name, tensor in ref_last["state_dict"].items():
        assert torch.equal(tensor, got_last["state_dict"][name]), name


def test_make_reproduce_finds_no_difference_for_a_recorded_fold(tiny_run: Path, tiny_phantom: Path,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """`make reproduce` in miniature: record the tiny fold, train it again in another process, diff: empty."""
    from lumbar_lightning.reproduce import record_reference

    reference = tmp_path / "reference"
    assert record_reference(tiny_run, reference) == 1
    recorded = json.loads((reference / "A1" / "fold_0.json").read_text())
    assert "seconds" not in recorded and "fit_seconds" not in recorded["grade"]["gt_box"]
    cmd = [sys.executable, "-m", "lumbar_lightning.reproduce", f"data.data_dir={tiny_phantom}", "logger=none",
           f"reference={reference}", f"hydra.run.dir={tmp_path / 'again'}", *TINY_CV]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fold 0 rater A1: identical to" in result.stdout + result.stderr


def test_any_difference_is_reported_with_its_path() -> None:
    from lumbar_lightning.reproduce import diff_metrics

    a = {
        "grade": {"chained": {"accuracy": 0.9, "confusion_matrix": [[3, 1], [0, 2]]}, "seconds": 5.0},
        "x": float("nan"),
    }
    b = {
        "grade": {"chained": {"accuracy": 0.9, "confusion_matrix": [[3, 1], [1, 1]]}, "seconds": 9.0},
        "x": float("nan"),
    }
    assert diff_metrics(comparable(a), comparable(b)) == ["grade/chained/confusion_matrix[1][0]: 0 -> 1",
                                                          "grade/chained/confusion_matrix[1][1]: 2 -> 1"]  # fmt: skip
    assert diff_metrics(comparable(a), comparable(a)) == []
    assert diff_metrics({"k": 1}, {}) == ["k: 1 -> missing"]
