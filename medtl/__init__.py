"""medtl: medical-imaging transfer learning with MONAI, Hydra and MLflow."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra configuration tree that ships with the source checkout.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"

__all__ = ["CONFIG_DIR", "__version__"]
