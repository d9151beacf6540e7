"""The RSNA 2024 download as published: file names, conditions, levels and classes (nothing here reads pixels)."""

from __future__ import annotations

TRAIN_CSV = "train.csv"
COORDINATES_CSV = "train_label_coordinates.csv"
SERIES_CSV = "train_series_descriptions.csv"
IMAGES_DIR = "train_images"

AXIAL_T2 = "Axial T2"
SAGITTAL_T2 = "Sagittal T2/STIR"
SAGITTAL_T1 = "Sagittal T1"
SERIES_DESCRIPTIONS = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)

CANAL = "Spinal Canal Stenosis"
LEFT_SUBARTICULAR = "Left Subarticular Stenosis"
RIGHT_SUBARTICULAR = "Right Subarticular Stenosis"
CONDITIONS = (
    CANAL,
    "Left Neural Foraminal Narrowing",
    "Right Neural Foraminal Narrowing",
    LEFT_SUBARTICULAR,
    RIGHT_SUBARTICULAR,
)
#: Levels as train_label_coordinates.csv spells them, and as our vertebral_level column does.
LEVELS = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
#: The severity classes, mild to severe (grading=rsna uses these names).
CLASSES = ("Normal/Mild", "Moderate", "Severe")

COORDINATE_COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
SERIES_COLUMNS = ("study_id", "series_id", "series_description")


def label_column(condition: str, level: str) -> str:
    """train.csv's column for a condition at a level: ``Spinal Canal Stenosis``, ``L4/L5`` ->
    ``spinal_canal_stenosis_l4_l5``."""
    return f"{condition.lower().replace(' ', '_')}_{level.lower().replace('/', '_')}"


#: The 25 label columns of train.csv, in the published order (condition by condition, L1/L2 to L5/S1).
LABEL_COLUMNS = tuple(
    label_column(c, lv)
    for c in (
        CANAL,
        "Left Neural Foraminal Narrowing",
        "Right Neural Foraminal Narrowing",
        LEFT_SUBARTICULAR,
        RIGHT_SUBARTICULAR,
    )
    for lv in LEVELS
)
