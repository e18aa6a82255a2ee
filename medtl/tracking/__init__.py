"""Experiment tracking (MLflow) and the figures logged with each run.

:class:`MlflowTracker` is imported on first use, so the light modules here (``params``, ``sweep``) can be
imported by the command line before MLflow and torch are.
"""
from __future__ import annotations

from typing import Any

__all__ = ["MlflowTracker"]


def __getattr__(name: str) -> Any:
    if name == "MlflowTracker":
        from medtl.tracking.mlflow_tracker import MlflowTracker

        return MlflowTracker
    raise AttributeError(f"module 'medtl.tracking' has no attribute {name!r}")
