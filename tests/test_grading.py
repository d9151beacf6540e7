"""Grade schemes as configuration: validation, the labels' check, the weighted log loss, the config groups."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lumbar_lightning.data.grading import SCHIZAS, GradingScheme, activate_from, active, grading
from lumbar_lightning.data.labels import CSV_COLUMNS, load_labels
from lumbar_lightning.evaluation.agreement import weighted_log_loss

RSNA = GradingScheme("rsna", ["Normal/Mild", "Moderate", "Severe"], weights=[1, 2, 4])


def test_a_scheme_refuses_what_it_cannot_mean() -> None:
    with pytest.raises(ValueError, match="distinct"):
        GradingScheme("x", ["A", "A"])
    with pytest.raises(ValueError, match="severe classes"):
        GradingScheme("x", ["A", "B"], severe=["C"])
    with pytest.raises(ValueError, match="2 weights for 3 classes"):
        GradingScheme("x", ["A", "B", "C"], weights=[1, 2])
    assert GradingScheme("x", ["N", "M", "S"]).severe == ("M", "S")  # default: the two most severe


def test_labels_are_checked_against_the_active_scheme(tmp_path: Path) -> None:
    body = "A1,1.1,10,20,30,40,rootlet,Moderate,\nA1,1.2,10,20,30,40,rootlet,B,\n"
    (tmp_path / "labels.csv").write_text(",".join(CSV_COLUMNS) + "\n" + body)
    sizes = {"1.1": (100, 120), "1.2": (100, 120)}
    table = load_labels(tmp_path / "labels.csv", sizes)
    assert table.rows["grade"].tolist() == ["B"]
    assert "unknown grade 'Moderate': must be one of A, B, C, D" in table.rejected["A1"][0].reason
    with grading(RSNA):
        table = load_labels(tmp_path / "labels.csv", sizes)
        assert table.rows["grade"].tolist() == ["Moderate"]
        assert "must be one of Normal/Mild, Moderate, Severe" in table.rejected["A1"][0].reason
    assert active() == SCHIZAS  # the block ends, the default is back


def test_weighted_log_loss_by_hand() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    reference = ["Normal/Mild", "Moderate", "Severe"]
    expected = -(1 * math.log(0.7) + 2 * math.log(0.5) + 4 * math.log(0.8)) / 7
    assert weighted_log_loss(reference, probs, RSNA.classes, RSNA.weights) == pytest.approx(expected)
    # unnormalised rows are normalised first, as the challenge's scorer does
    assert weighted_log_loss(reference, probs * 3, RSNA.classes, RSNA.weights) == pytest.approx(expected)


def test_grading_config_groups_compose_and_activate() -> None:
    from tests.conftest import tiny_cv_config

    try:
        assert activate_from(tiny_cv_config("grading=rsna")) == RSNA
        assert active().weights == (1.0, 2.0, 4.0)
        assert activate_from(tiny_cv_config()) == SCHIZAS
    finally:
        activate_from({})
    assert active() == SCHIZAS


def test_reading_apps_take_each_runs_own_scheme(tmp_path: Path) -> None:
    """``lumbar-compare`` and ``lumbar-record`` grade a finished run in the scheme it trained in (the config its
    folds saved, which a seed's folder of a ``seeds=[...]`` run also holds), whatever ``grading=`` says on their
    own command line, and refuse to read two runs of different schemes together."""
    from omegaconf import OmegaConf

    from lumbar_lightning.data.errors import DataContractError
    from lumbar_lightning.data.grading import activate_runs, run_scheme
    from tests.conftest import tiny_cv_config

    def run(name: str, cfg) -> Path:
        fold = tmp_path / name / "A1" / "fold_0"
        fold.mkdir(parents=True)
        OmegaConf.save(cfg, fold / "config.yaml")
        return fold.parents[1]

    rsna_run, schizas_run = run("rsna", tiny_cv_config("grading=rsna")), run("schizas", tiny_cv_config())
    old_run = run("before_schemes", OmegaConf.create({"seed": 0}))  # saved before grading schemes existed
    try:
        assert run_scheme(rsna_run) == RSNA and run_scheme(schizas_run) == SCHIZAS
        assert run_scheme(old_run) == SCHIZAS and run_scheme(tmp_path / "empty") is None
        assert activate_runs(rsna_run, fallback=tiny_cv_config()) == RSNA and active() == RSNA
        assert activate_runs(tmp_path / "empty", fallback=tiny_cv_config("grading=rsna")) == RSNA
        assert activate_runs(schizas_run, tmp_path / "empty") == SCHIZAS
        with pytest.raises(
            DataContractError, match=r"different schemes.*rsna \(rsna: .*schizas \(schizas: A/B/C/D\)"
        ):
            activate_runs(rsna_run, schizas_run)
    finally:
        activate_from({})
