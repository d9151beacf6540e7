"""The config tree, shipped inside the package so a wheel carries it (``pkg://lumbar_lightning.conf``)."""

from pathlib import Path

#: Entry points resolve the tree as ``pkg://``; users add their own with ``--config-dir`` or ``hydra.searchpath``.
CONF_PATH = "pkg://lumbar_lightning.conf"
#: The same tree as a folder (Hydra's ``initialize_config_dir`` in tests and tools).
CONF_DIR = str(Path(__file__).resolve().parent)
