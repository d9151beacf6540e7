"""Messy and hostile input: series selection, enhanced multi-frame objects, broken files, and fuzzing."""

from __future__ import annotations

import builtins
import csv
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import LABEL_HEADER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumbar_lightning.data.dataset import LumbarDataset
from lumbar_lightning.data.dicom.cache import ImageCache
from lumbar_lightning.data.dicom.pixels import read_images
from lumbar_lightning.data.dicom.scan import scan_dicom
from lumbar_lightning.data.dicom.writer import (
    SeriesInfo,
    deterministic_uid,
    write_enhanced_mr,
    write_mr_slice,
)
from lumbar_lightning.data.errors import DataContractError
from lumbar_lightning.data.labels import load_labels

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _series(name: str, **kw: object) -> SeriesInfo:
    base = dict(
        patient_id="PAT1",
        study_uid=deterministic_uid("study"),
        series_uid=deterministic_uid("series", name),
        frame_of_reference_uid=deterministic_uid("for"),
        pixel_spacing=0.7,
        slice_thickness=4.0,
        spacing_between_slices=4.4,
        series_description=name,
    )
    return SeriesInfo(**{**base, **kw})  # type: ignore[arg-type]


def _pixels(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=(size, size), dtype=np.uint16)


def _write_labels(root: Path, rows: list[list[object]], header: list[str] = LABEL_HEADER) -> None:
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _study_with_many_series(root: Path) -> dict[str, list[str]]:
    """One study as a hospital exports it: localizer, sagittal T2, coronal, axial T1, axial T2 (5 slices, file
    names and instance numbers in scrambled order)."""
    uids: dict[str, list[str]] = {}
    layout = {
        "localizer": (_series("localizer", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), 3),
        "t2_tse_sag": (_series("t2_tse_sag", orientation=SAGITTAL), 4),
        "cor_stir": (_series("cor_stir", orientation=CORONAL), 3),
        "t1_tse_tra": (_series("t1_tse_tra", echo_time=12.0), 5),
        "t2_tse_tra": (_series("t2_tse_tra"), 5),
    }
    scramble = [3, 0, 4, 1, 2]
    for name, (series, n) in layout.items():
        uids[name] = []
        for i in range(n):
            uid = deterministic_uid("sop", name, i)
            uids[name].append(uid)
            k = scramble[i % 5]
            write_mr_slice(
                root / "dicom" / name / f"IM{k:03d}.dcm",
                _pixels(i),
                series,
                uid,
                10 - k,
                (0.0, 0.0, -4.4 * i),
            )
    return uids


def test_the_axial_t2_series_is_chosen_and_every_other_series_says_why(tmp_path: Path) -> None:
    uids = _study_with_many_series(tmp_path)
    rows = [["A1", u, 8, 8, 20, 20, "rootlet", "A", "L4/L5"] for u in uids["t2_tse_tra"]]
    rows.append(["A1", uids["t2_tse_sag"][0], 8, 8, 20, 20, "rootlet", "B", ""])
    _write_labels(tmp_path, rows)
    ds = LumbarDataset.ingest(tmp_path)
    assert set(ds.images["sop_instance_uid"]) == set(uids["t2_tse_tra"])
    # Ordered by position along the slice normal (z descending -> ascending), not by file name or InstanceNumber.
    assert list(ds.images["sop_instance_uid"]) == list(reversed(uids["t2_tse_tra"]))
    reasons = {d["description"]: d["reason"] for d in ds.report()["excluded_series"]}
    assert reasons["localizer"] == "localizer"
    assert reasons["t2_tse_sag"].startswith("sagittal, 90 degrees from axial")
    assert reasons["cor_stir"].startswith("coronal, 90 degrees")
    assert "another axial series of the study was chosen ('t2_tse_tra'" in reasons["t1_tse_tra"]
    (bad,) = ds.labels.rejected["A1"]
    assert bad.line == 7 and "series that was excluded (sagittal" in bad.reason


def test_axial_blocks_exported_as_separate_series_are_kept_together(tmp_path: Path) -> None:
    """Angled blocks (one per disc) written as separate series with one description: all of them are used."""
    uids = _study_with_many_series(tmp_path)
    block = _series(
        "t2_tse_tra",
        series_uid=deterministic_uid("series", "block2"),
        orientation=(1.0, 0.0, 0.0, 0.0, 0.97, -0.24),
    )  # tilted 14 degrees
    extra = [deterministic_uid("sop", "block2", i) for i in range(3)]
    for i, uid in enumerate(extra):
        write_mr_slice(
            tmp_path / "dicom" / "block2" / f"{i}.dcm",
            _pixels(i),
            block,
            uid,
            i + 1,
            (0.0, 0.0, -30.0 - 4 * i),
        )
    _write_labels(tmp_path, [["A1", u, 8, 8, 20, 20, "rootlet", "A", ""] for u in uids["t2_tse_tra"] + extra])
    ds = LumbarDataset.ingest(tmp_path)
    assert set(ds.images["sop_instance_uid"]) == set(uids["t2_tse_tra"]) | set(extra)
    chosen = [d for d in ds.series if d.chosen]
    assert len(chosen) == 2 and {d.description for d in chosen} == {"t2_tse_tra"}
    assert ds.labels.rejected == {}


def test_a_study_with_no_axial_series_is_a_clear_error(tmp_path: Path) -> None:
    uid = deterministic_uid("sop", "sag")
    write_mr_slice(
        tmp_path / "dicom" / "a.dcm", _pixels(0), _series("sag", orientation=SAGITTAL), uid, 1, (0, 0, 0)
    )
    _write_labels(tmp_path, [["A1", uid, 8, 8, 20, 20, "rootlet", "A", ""]])
    with pytest.raises(DataContractError, match=r"no axial series .*\(sagittal"):
        LumbarDataset.ingest(tmp_path)


def test_enhanced_multiframe_frames_are_images_addressed_by_frame(tmp_path: Path) -> None:
    frames = np.stack([_pixels(i) for i in range(4)])
    uid = deterministic_uid("enhanced")
    write_enhanced_mr(
        tmp_path / "dicom" / "enh.dcm",
        frames,
        _series("t2_tse_tra"),
        uid,
        [(0.0, 0.0, -4.4 * i) for i in range(4)],
    )
    rows = [["A1", uid, 8, 8, 20, 20, "rootlet", "A", "", f] for f in (1, 3)]
    rows.append(["A1", uid, 8, 8, 20, 20, "rootlet", "A", "", 9])  # no such frame
    _write_labels(tmp_path, rows, [*LABEL_HEADER, "frame"])
    ds = LumbarDataset.ingest(tmp_path)
    assert list(ds.images["frame"]) == [4, 3, 2, 1]  # slice order: z ascending
    assert list(ds.images["ipp_z"]) == pytest.approx([-13.2, -8.8, -4.4, 0.0])
    assert set(ds.labels.rows["sop_instance_uid"]) == {f"{uid}#1", f"{uid}#3"}
    (bad,) = ds.labels.rejected["A1"]
    assert bad.line == 4 and "frame 9" in bad.reason
    # Each frame's pixels are cached on their own and come back as that frame.
    raw = frames[2].astype(np.float32)
    got = ds.cache.get(f"{uid}#3")
    assert got.shape == (32, 32) and np.corrcoef(got.ravel(), raw.ravel())[0, 1] > 0.999


# -- hostile files ---------------------------------------------------------------------------------------------
def _valid(path: Path, seed: int = 0, size: int = 32) -> Path:
    write_mr_slice(
        path, _pixels(seed, size), _series("t2"), deterministic_uid("valid", path.name, seed), 1, (0, 0, 0)
    )
    return path


def _rewrite(src: Path, dst: Path, **tags: tuple[str, object]) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, (vr, value) in tags.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        if keyword in ds:
            del ds[keyword]
        ds.add_new(tag, vr, value)
    ds.SOPInstanceUID = deterministic_uid("hostile", dst.name)
    ds.save_as(dst, enforce_file_format=False)
    return dst


def hostile_folder(root: Path) -> dict[str, str]:
    """Every hostile case next to two good files; returns file name -> the reason we expect to read."""
    d = root / "dicom"
    d.mkdir(parents=True)
    good = _valid(d / "good.dcm")
    _valid(d / "good2.dcm", seed=1)
    _rewrite(good, d / "declared_beyond.dcm", Rows=("US", 2000), Columns=("US", 2000))
    _rewrite(good, d / "huge_header.dcm", Rows=("US", 30000), Columns=("US", 30000))
    _rewrite(good, d / "zero_pixels.dcm", PixelData=("OW", b""))
    _rewrite(good, d / "wrong_vr.dcm", Rows=("LO", "abc"))
    _rewrite(good, d / "many_frames.dcm", NumberOfFrames=("IS", "100000"))
    (d / "not_dicom.dcm").write_text("Name,ID\nDoe,1\n")
    (d / "empty.dcm").write_bytes(b"")
    (d / "truncated.dcm").write_bytes(good.read_bytes()[:-1000])
    os.symlink(d / "loop_b.dcm", d / "loop_a.dcm")
    os.symlink(d / "loop_a.dcm", d / "loop_b.dcm")
    os.symlink(d / "nowhere.dcm", d / "dangling.dcm")
    (d / "sub").mkdir()
    os.symlink(d, d / "sub" / "dir_loop")  # a directory link back up: never followed
    os.mkfifo(d / "fifo.dcm")
    (d / "locked.dcm").write_bytes(good.read_bytes())
    os.chmod(d / "locked.dcm", 0)
    # Two files claim one SOPInstanceUID with different pixels; a third is an identical copy of a good file.
    a = _valid(d / "dup_a.dcm", seed=5)
    ds = pydicom.dcmread(a)
    ds.PixelData = _pixels(6).tobytes()
    ds.save_as(d / "dup_b.dcm", enforce_file_format=False)
    (d / "zz_copy_of_good.dcm").write_bytes(good.read_bytes())
    return {
        "declared_beyond.dcm": "pixel data is shorter than its header declares",
        "huge_header.dcm": "image size 30000x30000 exceeds the limit",
        "zero_pixels.dcm": "pixel data is empty (zero length)",
        "wrong_vr.dcm": "malformed image size tags",
        "many_frames.dcm": "NumberOfFrames=100000 is outside",
        "not_dicom.dcm": "not a DICOM file",
        "empty.dcm": "not a DICOM file",
        "truncated.dcm": "pixel data is shorter than its header declares",
        "loop_a.dcm": "symbolic link loop",
        "loop_b.dcm": "symbolic link loop",
        "dangling.dcm": "cannot be read (No such file or directory)",
        "fifo.dcm": "not a regular file",
        "locked.dcm": "unreadable: permission denied",
        "dup_a.dcm": "has 2 copies with different pixels: all copies skipped",
        "dup_b.dcm": "with different pixels from",
        "zz_copy_of_good.dcm": "identical copy of",
    }


def test_every_hostile_file_is_skipped_with_its_reason_and_memory_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = hostile_folder(tmp_path)
    if os.geteuid() == 0:  # root reads mode-000 files: make the open fail as it does for everyone else
        real_open = builtins.open

        def guarded(file: object, *args: object, **kwargs: object) -> object:
            if str(file).endswith("locked.dcm"):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(builtins, "open", guarded)
    tracemalloc.start()
    index = scan_dicom(tmp_path / "dicom", ImageCache(tmp_path / "cache"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    monkeypatch.undo()
    assert sorted(Path(p).name for p in index.images["path"]) == ["good.dcm", "good2.dcm"]
    reasons: dict[str, list[str]] = {}
    for s in index.skipped:
        reasons.setdefault(Path(s.path).name, []).append(s.reason)
    assert set(reasons) == set(expected)
    for name, text in expected.items():
        assert any(text in r for r in reasons[name]), (name, reasons[name])
    # 30000x30000 uint16 alone would be 1.8 GB: nothing is allocated from an unchecked header.
    assert peak < 64 * 2**20, peak


# -- fuzzing ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _valid(tmp_path_factory.mktemp("fuzz") / "seed.dcm", size=16).read_bytes()


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_dicom_is_read_or_rejected_never_crashes(
    valid_bytes: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    raw = bytearray(valid_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 64))]
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        else:  # a length field blown up: four 0xFF bytes
            raw[pos : pos + 4] = b"\xff\xff\xff\xff"
        if not raw:
            raw = bytearray(b"\x00")
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(bytes(raw))
    try:
        images = read_images(path)
    except ValueError as exc:
        assert str(exc)  # a reason, never an empty message
    else:
        for record, pixels in images:
            assert pixels.ndim == 2 and pixels.shape == (record["rows"], record["columns"])


LABEL_FIELD = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["A1", "A2", "rootlet", "cord", "A", "B", "C", "D", "", "nan", "inf", "-1", "1e309", "0x10"]
    ),
    st.integers(-10, 100).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(LABEL_FIELD, min_size=0, max_size=11), max_size=6), keep_uid=st.booleans())
def test_mutated_label_rows_are_accepted_or_rejected_with_a_line(
    tmp_path: Path, rows: list[list[str]], keep_uid: bool
) -> None:
    uid = "1.2.3.4"
    if keep_uid:
        rows = [[r[0] if r else "A1", uid, *r[2:]] for r in rows]
    path = tmp_path / "labels.csv"
    with path.open("w", newline="", encoding="utf-8", errors="surrogatepass") as fh:
        writer = csv.writer(fh)
        writer.writerow(LABEL_HEADER)
        writer.writerows(rows)
    try:
        table = load_labels(path, {uid: (64, 64)})
    except DataContractError as exc:
        assert str(path) in str(exc)
    else:
        written = sum(
            1 for r in rows if r
        )  # the csv module writes an empty row as a blank line, which is skipped
        assert len(table.rows) + sum(len(v) for v in table.rejected.values()) == written
        assert all(r.line >= 2 and r.reason for v in table.rejected.values() for r in v)
        assert ((table.rows["x_min"] < table.rows["x_max"]) & (table.rows["x_max"] <= 64)).all()
