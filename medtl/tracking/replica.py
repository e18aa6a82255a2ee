"""What a data-parallel process other than rank 0 tracks: nothing (rank 0 owns the run, see
:mod:`medtl.engine.distributed`)."""
from __future__ import annotations

from types import TracebackType
from typing import Any

from medtl.tracking.mlflow_tracker import MlflowTracker

__all__ = ["ReplicaTracker"]


class ReplicaTracker:
    """Takes every call an :class:`MlflowTracker` takes and does nothing, so the pipeline has one code path on all
    ranks; a name ``MlflowTracker`` does not have is still an ``AttributeError``. ``run_id`` is ``None``."""

    def __init__(self, uri: str) -> None:
        self.uri, self.run_id = uri, None

    def __enter__(self) -> ReplicaTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or not callable(getattr(MlflowTracker, name, None)):
            raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")
        return _nothing


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None
