"""Write MR images as real DICOM, as a Siemens 1.5 T T2 TSE series would look: single-frame MR Image Storage,
or one Enhanced MR object with per-frame functional groups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

#: Root for UIDs we mint; ``generate_uid(entropy_srcs=...)`` makes them deterministic for a seeded cohort.
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


def deterministic_uid(*parts: object) -> str:
    """A valid UID derived from ``parts``: the same cohort seed gives the same UIDs, hence the same bytes."""
    # One joined source with a separator: pydicom concatenates sources, so (1, 11) and (11, 1) would collide.
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["\x1f".join(str(p) for p in parts)])


@dataclass
class SeriesInfo:
    """What the slices of one series share."""

    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    pixel_spacing: float
    slice_thickness: float
    spacing_between_slices: float
    series_description: str = "t2_tse_tra"
    series_number: int = 3
    patient_name: str = ""
    patient_birth_date: str = ""
    accession_number: str = ""
    study_date: str = ""
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # axial; sagittal is (0, 1, 0, 0, 0, -1)
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D")
    echo_time: float = 96.0
    repetition_time: float = 4000.0


def _dataset(
    path: Path, series: SeriesInfo, sop_uid: str, sop_class: str, instance_number: int
) -> FileDataset:
    """The patient, study, series and acquisition tags every image of ``series`` carries."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = list(series.image_type)
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.MagneticFieldStrength = 1.5
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = series.repetition_time
    ds.PatientID = series.patient_id
    ds.PatientName = series.patient_name
    ds.PatientBirthDate = series.patient_birth_date
    ds.PatientSex = ""
    ds.AccessionNumber = series.accession_number
    ds.StudyDate = series.study_date
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.series_description
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def _save(ds: FileDataset, path: Path, pixels: np.ndarray) -> None:
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_mr_slice(
    path: Path,
    pixels: np.ndarray,
    series: SeriesInfo,
    sop_uid: str,
    instance_number: int,
    position: tuple[float, float, float],
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
) -> None:
    """Write one slice; ``pixels`` are stored values (uint16), the modality values follow the rescale."""
    if pixels.dtype != np.uint16 or pixels.ndim != 2:
        raise ValueError("pixels must be a 2-D uint16 array")
    ds = _dataset(path, series, sop_uid, MRImageStorage, instance_number)
    ds.EchoTime = series.echo_time
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:g}" for v in series.orientation]
    ds.SliceLocation = f"{position[2]:.4f}"
    ds.PixelSpacing = [f"{series.pixel_spacing:.6f}", f"{series.pixel_spacing:.6f}"]
    ds.SliceThickness = series.slice_thickness
    ds.SpacingBetweenSlices = series.spacing_between_slices
    ds.Rows, ds.Columns = pixels.shape
    ds.RescaleSlope = f"{rescale_slope:g}"
    ds.RescaleIntercept = f"{rescale_intercept:g}"
    ds.RescaleType = "US"
    _save(ds, path, pixels)


def write_enhanced_mr(
    path: Path,
    frames: np.ndarray,
    series: SeriesInfo,
    sop_uid: str,
    positions: list[tuple[float, float, float]],
) -> None:
    """Write an Enhanced MR Image (one file, ``len(frames)`` frames), geometry in the functional groups: shared
    orientation, spacing and echo time; a position per frame, as newer scanners write them."""
    if frames.dtype != np.uint16 or frames.ndim != 3 or len(positions) != len(frames):
        raise ValueError("frames must be a 3-D uint16 array with one position per frame")
    ds = _dataset(path, series, sop_uid, EnhancedMRImageStorage, 1)
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    shared = Dataset()
    orientation, measures, echo = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [f"{v:g}" for v in series.orientation]
    measures.PixelSpacing = [f"{series.pixel_spacing:.6f}", f"{series.pixel_spacing:.6f}"]
    measures.SliceThickness = series.slice_thickness
    echo.EffectiveEchoTime = series.echo_time
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.MREchoSequence = Sequence([echo])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for position in positions:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [f"{v:.4f}" for v in position]
        item.PlanePositionSequence = Sequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    _save(ds, path, frames)
