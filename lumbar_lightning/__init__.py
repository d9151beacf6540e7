"""lumbar-lightning: three-stage lumbar spinal stenosis grading on axial T2 MRI."""

__version__ = "0.1.0"
