"""Experiment tracking (MLflow) and the figures logged with each run."""
from __future__ import annotations

from medtl.tracking.mlflow_tracker import MlflowTracker, flatten_config

__all__ = ["MlflowTracker", "flatten_config"]
