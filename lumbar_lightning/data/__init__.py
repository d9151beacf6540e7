"""Data layer: DICOM ingestion and cache, labels, folds, the synthetic phantom, transforms and datamodules."""
