"""Training objectives on the labelled source, selected with ``objective=<name>``: ``erm`` (cross-entropy), and
against a shortcut whose label follows the collection: ``group_dro`` and ``collection_adversary``. Each is one
module behind :func:`register_objective`."""
from __future__ import annotations

from medtl.objectives import collection_adversary as _collection_adversary  # noqa: F401 - registers it
from medtl.objectives import group_dro as _group_dro  # noqa: F401 - registers group_dro
from medtl.objectives.build import bind_objective, build_objective, shortcut_plan
from medtl.objectives.registry import (CrossEntropy, SourceBatch, SourceObjective, create_objective, list_objectives,
                                       register_objective)

__all__ = ["CrossEntropy", "SourceBatch", "SourceObjective", "bind_objective", "build_objective", "create_objective",
           "list_objectives", "register_objective", "shortcut_plan"]
