from __future__ import annotations

from pathlib import Path

import pytest

from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.labels import load_labels

SIZES = {"1.1": (100, 120), "1.2": (100, 120), "1.3": (100, 120)}
HEADER = "analyzer,sop_instance_uid,x_min,y_min,x_max,y_max,level,grade,vertebral_level,note\n"


def _load(tmp_path: Path, body: str, header: str = HEADER):
    path = tmp_path / "labels.csv"
    path.write_text(header + body)
    return load_labels(path, SIZES)


def test_valid_rows_are_typed_and_extra_columns_ignored(tmp_path: Path) -> None:
    table = _load(tmp_path, "A1,1.1,10,20,30.5,40,rootlet,B,L4/L5,x\nA1,1.2,0,0,120,100,cord,,T12/L1,\n")
    assert len(table.rows) == 2 and table.rejected == {}
    first = table.rows.iloc[0]
    assert first["x_max"] == 30.5 and first["grade"] == "B" and first["vertebral_level"] == "L4/L5"
    assert first["line"] == 2


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ("A1,9.9,10,20,30,40,rootlet,A,,", "unknown image"),
        ("A1,1.1,30,20,10,40,rootlet,A,,", "inverted"),
        ("A1,1.1,10,40,30,40,rootlet,A,,", "inverted"),
        ("A1,1.1,-1,20,30,40,rootlet,A,,", "outside"),
        ("A1,1.1,10,20,121,40,rootlet,A,,", "outside"),
        ("A1,1.1,10,20,30,101,rootlet,A,,", "outside"),
        ("A1,1.1,ten,20,30,40,rootlet,A,,", "not a number"),
        ("A1,1.1,nan,20,30,40,rootlet,A,,", "not a finite number"),
        ("A1,1.1,10,20,30,40,sacral,A,,", "unknown level"),
        ("A1,1.1,10,20,30,40,rootlet,E,,", "unknown grade"),
        ("A1,1.1,10,20,30,40,cord,B,,", "grade (B) on a cord row"),
        (",1.1,10,20,30,40,rootlet,A,,", "empty analyzer"),
        ("A1,1.1,10,20,30,40,rootlet,A,,,surplus", "more fields"),
    ],
)
def test_each_rule_rejects_with_line_number(tmp_path: Path, row: str, fragment: str) -> None:
    table = _load(tmp_path, "A1,1.2,10,20,30,40,rootlet,A,,\n" + row + "\n")
    assert len(table.rows) == 1
    rejected = [r for rows in table.rejected.values() for r in rows]
    assert len(rejected) == 1
    assert rejected[0].line == 3
    assert fragment in rejected[0].reason


def test_same_rater_twice_on_one_image(tmp_path: Path) -> None:
    table = _load(
        tmp_path,
        "A1,1.1,10,20,30,40,rootlet,A,,\nA2,1.1,10,20,30,40,rootlet,A,,\nA1,1.1,11,20,30,40,rootlet,B,,\n",
    )
    assert len(table.rows) == 2
    (bad,) = table.rejected["A1"]
    assert bad.line == 4 and "twice" in bad.reason and "line 2" in bad.reason
    assert table.report()["A1"] == {"accepted": 1, "rejected": [{"line": 4, "reason": bad.reason}]}


def test_missing_column_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match=r"line 1: missing required column.*grade"):
        _load(
            tmp_path,
            "A1,1.1,10,20,30,40,rootlet\n",
            header="analyzer,sop_instance_uid,x_min,y_min,x_max,y_max,level\n",
        )


def test_intersection_wide_table_and_grade_distribution(tmp_path: Path) -> None:
    table = _load(
        tmp_path,
        "A1,1.1,10,20,30,40,rootlet,A,,\nA1,1.2,10,20,30,40,rootlet,B,,\nA1,1.3,10,20,30,40,cord,,,\n"
        "A2,1.1,10,20,30,40,rootlet,B,,\nA2,1.3,10,20,30,40,rootlet,C,,\n",
    )
    assert table.intersection() == ["1.1", "1.3"]
    wide = table.wide()
    assert wide["grade_A1"].tolist() == ["A", ""] and wide["level_A2"].tolist() == ["rootlet", "rootlet"]
    dist = table.grade_distribution()
    assert dist["A1"] == {"A": 0.5, "B": 0.5, "C": 0.0, "D": 0.0}
    assert dist["A2"]["C"] == 0.5


def test_truth_file_without_analyzer_column(tmp_path: Path) -> None:
    path = tmp_path / "truth.csv"
    path.write_text("sop_instance_uid,x_min,y_min,x_max,y_max,level,grade\n1.1,1,2,3,4,rootlet,D\n")
    table = load_labels(path, SIZES, analyzer="truth")
    assert table.rows["analyzer"].tolist() == ["truth"] and table.rows["grade"].tolist() == ["D"]


def test_consensus_boxes_average_every_raters_box_per_image(tmp_path: Path) -> None:
    from lumbar_lightning.data.labels import CONSENSUS

    table = _load(
        tmp_path,
        "A2,1.1,12,22,32,44,rootlet,B,,\nA1,1.1,10,20,30,40,rootlet,A,,\nA1,1.2,5,6,7,8,cord,,,\n",
    )
    boxes = table.for_rater(CONSENSUS)
    assert boxes.index.tolist() == ["1.1", "1.2"] and set(boxes["analyzer"]) == {CONSENSUS}
    assert boxes.loc["1.1", ["x_min", "y_min", "x_max", "y_max"]].tolist() == [11.0, 21.0, 31.0, 42.0]
    assert boxes.loc["1.2", ["x_min", "y_min", "x_max", "y_max"]].tolist() == [5.0, 6.0, 7.0, 8.0]
    assert table.rows["x_min"].tolist() == [12.0, 10.0, 5.0]  # the raters' own rows are untouched


def test_the_consensus_carries_every_raters_votes_and_breaks_ties_towards_severity(tmp_path: Path) -> None:
    from lumbar_lightning.data.labels import CONSENSUS

    table = _load(
        tmp_path,
        "A1,1.1,10,20,30,40,rootlet,B,,\nA2,1.1,10,20,30,40,rootlet,D,,\n"  # a tie: B or D
        "A1,1.2,5,6,7,8,rootlet,C,,\nA2,1.2,5,6,7,8,cord,,,\n"  # level tie: rootlet, graded C by the one who graded
        "A1,1.3,5,6,7,8,cord,,,\nA2,1.3,5,6,7,8,cord,,,\n",
    )
    votes = table.for_rater(CONSENSUS)
    assert votes.loc["1.1", ["level", "grade"]].tolist() == ["rootlet", "D"]
    assert votes.loc["1.1", [f"grade_share_{g}" for g in "ABCD"]].tolist() == [0.0, 0.5, 0.0, 0.5]
    assert votes.loc["1.2", ["level", "grade", "rootlet_share", "grade_share_C"]].tolist() == [
        "rootlet",
        "C",
        0.5,
        1.0,
    ]
    assert votes.loc["1.3", ["level", "grade", "rootlet_share"]].tolist() == ["cord", "", 0.0]
    assert votes.loc["1.3", [f"grade_share_{g}" for g in "ABCD"]].sum() == 0.0
