"""Domain adaptation, selected with ``adaptation=<name>``: ``none``, ``adabn``, ``dann``, ``mmd``, ``coral``,
``entropy`` (also on top of any other through ``adaptation.entropy_weight``) and the ``target_oracle``
reference. Each is one module behind :func:`register_adaptation`.
"""
from __future__ import annotations

from medtl.adaptation import adabn as _adabn  # noqa: F401 - registers adabn
from medtl.adaptation import dann as _dann  # noqa: F401 - registers dann
from medtl.adaptation import discrepancy as _discrepancy  # noqa: F401 - registers mmd, coral
from medtl.adaptation import entropy as _entropy  # noqa: F401 - registers entropy
from medtl.adaptation.build import build_adaptation
from medtl.adaptation.registry import (AdaptationMethod, DomainBatch, NoAdaptation, create_adaptation,
                                       list_adaptations, register_adaptation)

__all__ = ["AdaptationMethod", "DomainBatch", "NoAdaptation", "build_adaptation", "create_adaptation",
           "list_adaptations", "register_adaptation"]
