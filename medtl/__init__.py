"""medtl: medical-imaging transfer learning with MONAI, Hydra and MLflow."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra configuration tree, shipped inside the package (``conf/`` in a checkout links to it).
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
#: The same tree as a Hydra search path: found wherever medtl is installed (wheel or editable).
CONFIG_MODULE = "pkg://medtl.conf"

__all__ = ["CONFIG_DIR", "CONFIG_MODULE", "__version__"]
