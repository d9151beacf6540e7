"""The RSNA 2024 Lumbar Spine Degenerative Classification data set: its layout (``layout``), the adapter that reads
a download into the data contract (``ingest``), and a replica the phantom writes in that layout (``replica``)."""
