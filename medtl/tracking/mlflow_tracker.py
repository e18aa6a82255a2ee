"""MLflow tracking: one run per job, ended FINISHED or FAILED, never left RUNNING."""
from __future__ import annotations

import logging
import signal
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from medtl.models.loading import STATE_DICT_FILE

__all__ = ["MlflowTracker", "flatten_config", "MAX_PARAM_LENGTH", "STATE_DICT_FILE"]

log = logging.getLogger(__name__)
MAX_PARAM_LENGTH = 500  # the strictest MLflow backends' limit; the full config is an artefact


class MlflowTracker:
    """Context manager around one MLflow run.

    Args:
        uri: tracking URI; the default ``sqlite:///mlflow.db`` is what ``mlflow ui`` opens in the same folder.
        experiment: MLflow experiment name.
        run_name: run name shown in the UI.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, log_model: bool = True,
                 tags: Mapping[str, str] | None = None) -> None:
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.should_log_model, self.tags = log_model, dict(tags or {})
        self.run_id: str | None = None
        self._previous_sigterm: Any = None

    def __enter__(self) -> MlflowTracker:
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment)
        if mlflow.active_run() is not None:  # left over by a crashed job in this process (Hydra -m)
            mlflow.end_run(status="FAILED")
        self.run_id = mlflow.start_run(run_name=self.run_name, tags=self.tags).info.run_id
        log.info("MLflow run %s (%s) in %s", self.run_id, self.run_name, self.uri)
        if threading.current_thread() is threading.main_thread():  # a scheduler's SIGTERM ends the run FAILED too
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        mlflow.end_run(status="FINISHED" if exc_type is None else "FAILED")

    def log_config(self, cfg: DictConfig) -> None:
        """Log the flattened resolved config as params and the full YAML as ``config.yaml``."""
        mlflow.log_params(flatten_config(OmegaConf.to_container(cfg, resolve=True)))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: _short(v) for k, v in params.items()})

    def log_data_check(self, report: Any, skipped: pd.DataFrame) -> None:
        """Log ``medtl.data.check``'s summary, its JSON report, warnings as tags and the skipped files."""
        if report is not None:
            self.log_metrics(report.summary())
            mlflow.log_text(report.to_json(), "data_check.json")
            for index, warning in enumerate(report.warnings):
                mlflow.set_tag(f"medtl.warning.{index}", warning[:MAX_PARAM_LENGTH])
        self.log_params({"data.skipped_files": len(skipped)})
        if len(skipped):
            self.log_frame(skipped, "skipped_files.csv")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
        mlflow.log_metrics(finite, step=step)

    def log_figure(self, figure: Figure, name: str) -> None:
        mlflow.log_figure(figure, f"plots/{name}")
        plt.close(figure)

    def log_frame(self, frame: pd.DataFrame, name: str) -> None:
        """Log a table as a CSV artefact ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            frame.to_csv(path, index=False)
            mlflow.log_artifact(str(path))

    def log_model(self, model: torch.nn.Module, input_example: np.ndarray, metadata: Mapping[str, Any]) -> str | None:
        """Log ``model`` in MLflow's ``pt2`` format (a traced graph, no pickle); return its ``models:/`` URI.

        The eager ``state_dict`` rides along as ``extra_files/state_dict.pt`` (tensors only, read back with
        ``weights_only=True``): prediction-time AdaBN rebuilds the model from it to re-estimate BatchNorm.
        """
        if not self.should_log_model:
            return None
        model = model.eval().cpu()
        with tempfile.TemporaryDirectory() as tmp:
            state_path = Path(tmp) / STATE_DICT_FILE
            torch.save(model.state_dict(), state_path)
            info = mlflow.pytorch.log_model(model, name="model", input_example=input_example,
                                            metadata=dict(metadata), serialization_format="pt2",
                                            extra_files=[str(state_path)],
                                            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        mlflow.set_tag("medtl.model_uri", info.model_uri)
        return info.model_uri


def flatten_config(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; values cut to :data:`MAX_PARAM_LENGTH` characters."""
    if isinstance(tree, Mapping):
        flat: dict[str, str] = {}
        for key, value in tree.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): _short(tree)}


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _short(value: Any) -> str:
    text, suffix = str(value), "...(truncated)"
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - len(suffix)] + suffix
