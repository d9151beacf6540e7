"""DICOM in and out: ``headers`` (what an image must hold, the index row, pseudonyms), ``pixels`` (decode and
normalise), ``cache`` (decoded once per file version), ``scan`` (a folder tree into an index, nothing fatal),
``writer`` (MR images as real DICOM, for the phantoms and tests)."""
