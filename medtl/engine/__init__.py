"""Training loop, schedules and metrics."""
from __future__ import annotations

from medtl.engine.loop import FitResult, Predictions, Trainer, resolve_device
from medtl.engine.metrics import BinaryMetrics, binary_metrics, choose_threshold, multiclass_metrics

__all__ = ["FitResult", "Predictions", "Trainer", "resolve_device", "BinaryMetrics", "binary_metrics",
           "choose_threshold", "multiclass_metrics"]
