"""Write axial MR slices as real DICOM (MR Image Storage), as a Siemens 1.5 T T2 TSE series would look."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

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
    """Write one axial slice; ``pixels`` are stored values (uint16), the modality values follow the rescale."""
    if pixels.dtype != np.uint16 or pixels.ndim != 2:
        raise ValueError("pixels must be a 2-D uint16 array")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.MagneticFieldStrength = 1.5
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "2D"
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
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = f"{position[2]:.4f}"
    ds.PixelSpacing = [f"{series.pixel_spacing:.6f}", f"{series.pixel_spacing:.6f}"]
    ds.SliceThickness = series.slice_thickness
    ds.SpacingBetweenSlices = series.spacing_between_slices
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{rescale_slope:g}"
    ds.RescaleIntercept = f"{rescale_intercept:g}"
    ds.RescaleType = "US"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
