"""lumbar-lightning: three-stage lumbar spinal stenosis grading on axial T2 MRI."""

# First, before numpy, torch or cv2 are imported anywhere: results depend on the lock file, not on the CPU.
from lumbar_lightning.numerics import pin as _pin_numerics

_pin_numerics()

# Freed blocks stay in the process: no fresh zeroed pages every training step (no number changes).
from lumbar_lightning.allocator import keep_freed_memory as _keep_freed_memory  # noqa: E402

_keep_freed_memory()

__version__ = "0.1.0"
