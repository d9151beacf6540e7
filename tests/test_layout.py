"""RunLayout: the one place that knows a run folder's paths."""

from __future__ import annotations

from pathlib import Path

from lumbar_lightning.layout import FoldLayout, RunLayout


def test_folds_in_path_order_filtered_by_what_they_hold(tmp_path: Path) -> None:
    run = RunLayout(tmp_path)
    for rater, fold in [("A2", 0), ("A1", 2), ("A1", 10), ("A1", 0), ("A1", "external")]:
        run.fold(rater, fold).dir.mkdir(parents=True)
    for rater, fold in [("A1", 2), ("A1", 10), ("A2", 0)]:
        run.fold(rater, fold).metrics.write_text("{}")
    run.fold("A1", 0).pipeline.write_text("{}")
    (tmp_path / "A1" / "notes").mkdir()  # not a fold folder
    assert [(f.rater, f.fold) for f in run.folds()] == [
        ("A1", 0),
        ("A1", 10),
        ("A1", 2),
        ("A1", "external"),
        ("A2", 0),
    ]  # path order: fold_10 before fold_2
    assert [(f.rater, f.fold) for f in run.folds(having="metrics")] == [("A1", 10), ("A1", 2), ("A2", 0)]
    assert [f.fold for f in run.folds("A1", having="pipeline")] == [0]
    assert run.folds("A3") == []


def test_fold_paths_are_where_runs_and_predict_find_them(tmp_path: Path) -> None:
    fold = RunLayout(tmp_path).fold("A1", 3)
    assert fold == FoldLayout(tmp_path / "A1" / "fold_3")
    assert fold.best("grade") == tmp_path / "A1/fold_3/checkpoints/grade/best.ckpt"
    assert fold.last("detector").name == "last.ckpt" and fold.done("rootlet").name == "done.json"
    assert fold.done("rootlet").parent == fold.stage_dir("rootlet")
    assert (fold.pipeline.name, fold.metrics.name, fold.predictions.name) == (
        "pipeline.json",
        "metrics.json",
        "predictions.csv",
    )
    assert RunLayout(tmp_path).seed(2).summary == tmp_path / "seed_2" / "cv_summary.json"
    run = RunLayout(tmp_path)
    assert run.confusion_figure("grade") == tmp_path / "figures" / "confusion_grade.png"
    assert (
        str(RunLayout(Path()).confusion_figure("rootlet")) == "figures/confusion_rootlet.png"
    )  # report links
    assert (run.seeds_report.name, run.seeds_summary.name, run.objective.name) == (
        "seeds_report.md",
        "seeds_summary.json",
        "objective.json",
    )
