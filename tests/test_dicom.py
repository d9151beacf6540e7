from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lumbar_lightning.data.dicom.cache import ImageCache
from lumbar_lightning.data.dicom.headers import pseudonymise
from lumbar_lightning.data.dicom.pixels import decode_pixels, read_image
from lumbar_lightning.data.dicom.scan import scan_dicom

MR_VARIANTS = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]


def _test_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} missing"
    return Path(path)


@pytest.mark.parametrize("name", MR_VARIANTS)
def test_every_transfer_syntax_decodes_to_the_reference_array(name: str) -> None:
    _, reference = read_image(_test_file("MR_small.dcm"))
    record, pixels = read_image(_test_file(name))
    assert pixels.shape == (64, 64)
    np.testing.assert_array_equal(pixels, reference)
    assert record["rows"] == 64 and record["modality"] == "MR"


def test_transfer_syntaxes_really_differ() -> None:
    syntaxes = {read_image(_test_file(n))[0]["transfer_syntax"] for n in MR_VARIANTS}
    assert len(syntaxes) >= 6  # explicit/implicit LE, BE, RLE, JPEG-LS, JPEG 2000


def test_truncated_file_is_skipped_with_a_reason(tmp_path: Path) -> None:
    shutil.copy(_test_file("MR_small.dcm"), tmp_path / "good.dcm")
    shutil.copy(_test_file("MR_truncated.dcm"), tmp_path / "bad.dcm")
    (tmp_path / "notes.dcm").write_text("this is not DICOM")
    index = scan_dicom(tmp_path, ImageCache(tmp_path / ".." / "cache"))
    assert len(index.images) == 1
    reasons = {Path(s.path).name: s.reason for s in index.skipped}
    assert set(reasons) == {"bad.dcm", "notes.dcm"}
    assert "pixel data" in reasons["bad.dcm"]
    assert "not a DICOM file" in reasons["notes.dcm"]


def test_rescale_and_monochrome1() -> None:
    ds = pydicom.dcmread(_test_file("MR_small.dcm"))
    raw = ds.pixel_array.astype(np.float32)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    np.testing.assert_allclose(decode_pixels(ds), raw * 2 - 10)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = decode_pixels(ds)
    scaled = raw * 2 - 10
    np.testing.assert_allclose(inverted, scaled.max() + scaled.min() - scaled)
    assert np.argmax(inverted) == np.argmin(scaled)


def test_cache_is_reused_and_invalidated_when_a_file_changes(tiny_dataset: Path, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    first = scan_dicom(tiny_dataset / "dicom", cache)
    assert first.decoded == 48 and first.from_cache == 0
    second = scan_dicom(tiny_dataset / "dicom", cache)
    assert second.decoded == 0 and second.from_cache == 48
    # Rewrite one file with other pixels: only that one is decoded again, and the cache serves the new pixels.
    target = Path(first.images.iloc[5]["path"])
    uid = first.images.iloc[5]["sop_instance_uid"]
    before = cache.get(uid)
    ds = pydicom.dcmread(target)
    ds.PixelData = (4000 - ds.pixel_array).astype(np.uint16).tobytes()
    ds.save_as(target)
    os.utime(target, ns=(1, 1))
    third = scan_dicom(tiny_dataset / "dicom", cache)
    assert third.decoded == 1 and third.from_cache == 47
    after = cache.get(uid)
    assert after.dtype == np.float32 and after.shape == (32, 32)
    assert not np.allclose(before, after)
    assert after.min() >= 0.0 and after.max() <= 1.0


def test_duplicate_sop_instance_uid_keeps_the_first_copy(tiny_dataset: Path, tmp_path: Path) -> None:
    src = tiny_dataset / "dicom" / "p0" / "1.dcm"
    shutil.copy(src, tiny_dataset / "dicom" / "zz_copy.dcm")
    index = scan_dicom(tiny_dataset / "dicom", ImageCache(tmp_path / "cache"))
    assert len(index.images) == 48
    assert len(index.skipped) == 1
    assert "duplicate SOPInstanceUID" in index.skipped[0].reason
    assert str(src) in index.skipped[0].reason


def test_pseudonyms_are_stable_salted_and_hide_the_id(tiny_dataset: Path, tmp_path: Path) -> None:
    assert pseudonymise("PAT001") == pseudonymise("PAT001")
    assert pseudonymise("PAT001") != pseudonymise("PAT001", salt="other")
    assert "PAT001" not in pseudonymise("PAT001")
    index = scan_dicom(tiny_dataset / "dicom", ImageCache(tmp_path / "cache"), salt="s1")
    assert set(index.images["patient"]) == {pseudonymise(f"PAT{p:03d}", "s1") for p in range(12)}


def test_ingesting_with_worker_processes_gives_what_one_process_gives(
    tiny_phantom: Path, tmp_path: Path
) -> None:
    """The files to decode are spread over processes (read in order, a bounded window ahead): the index, the
    skipped list and every cached image are the same as a single-process scan's."""
    serial = scan_dicom(tiny_phantom / "dicom", ImageCache(tmp_path / "one"), workers=1)
    parallel = scan_dicom(tiny_phantom / "dicom", ImageCache(tmp_path / "two"), workers=2)
    assert len(serial.images) >= 64 and serial.decoded == parallel.decoded == len(serial.images)
    assert serial.images.equals(parallel.images) and serial.skipped == parallel.skipped
    one, two = ImageCache(tmp_path / "one"), ImageCache(tmp_path / "two")
    for uid in serial.images["sop_instance_uid"]:
        assert np.array_equal(one.get(uid), two.get(uid))


def test_parallel_writers_of_one_cache_never_collide(tmp_path: Path) -> None:
    """Two runs refreshing the same cache at once (multirun, CV workers) each rename their own temporary file:
    with one shared temporary name, one run's rename found the file already moved (FileNotFoundError)."""
    from concurrent.futures import ThreadPoolExecutor

    cache = ImageCache(tmp_path / "cache")
    images = [np.full((8, 8), i / 10, dtype=np.float32) for i in range(8)]

    def write(i: int) -> None:
        for _ in range(25):
            cache.save_manifest({"writer": {"i": i}})
            cache.put("1.2.3", images[i])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))  # raises here if a writer failed
    assert cache.load_manifest()["writer"]["i"] in range(8)
    assert any(np.allclose(cache.get("1.2.3"), im, atol=1e-3) for im in images)
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_images_held_in_memory_are_the_cache_bit_for_bit_within_a_budget(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LumbarDataset.image: what ImageCache.get reads, without a disk read the second time, and never more than
    PIXEL_MEMORY_MB held (least recently used first out)."""
    import lumbar_lightning.data.dataset as dataset_module
    from lumbar_lightning.data.dataset import LumbarDataset

    ds = LumbarDataset.ingest(tiny_dataset, tmp_path / "cache")
    uids = list(ds.images["sop_instance_uid"])
    one = ds.cache.get(uids[0]).astype(np.float16).nbytes
    monkeypatch.setattr(dataset_module, "PIXEL_MEMORY_MB", 3.5 * one / 2**20)  # room for three images
    for uid in uids[:5]:
        got = ds.image(uid)
        assert got.dtype == np.float32 and np.array_equal(got, ds.cache.get(uid))
    assert list(ds._pixels) == uids[2:5] and ds._pixel_bytes == 3 * one
    ds.image(uids[2])  # used again: now the most recent, so uids[3] goes first
    ds.image(uids[5])
    assert list(ds._pixels) == [uids[4], uids[2], uids[5]]
    ds.cache.image_path(uids[5]).unlink()  # held: no disk read
    assert np.array_equal(ds.image(uids[5]), ds._pixels[uids[5]].astype(np.float32))
