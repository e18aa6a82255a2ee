"""MLflow tracking: one run per job, ended FINISHED or FAILED, never left RUNNING."""
from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
import numpy as np
import pandas as pd
import torch
from filelock import FileLock
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from medtl.data.pseudonym import CaseNames
from medtl.errors import MedtlError
from medtl.models.loading import STATE_DICT_FILE
from medtl.tracking import artifacts
from medtl.tracking.local_server import health_problem
from medtl.tracking.params import compared_params
from medtl.tracking.run_info import dataset_name
from medtl.tracking.sweep import PARENT_RUN_ENV

__all__ = ["MlflowTracker", "get_or_create_experiment", "check_server", "open_store", "mark_orphaned_runs_killed", "MAX_PARAM_LENGTH",
           "STATE_DICT_FILE"]

log = logging.getLogger(__name__)
MAX_PARAM_LENGTH = 500  # the strictest MLflow backends' limit; the full config is an artefact


class MlflowTracker:
    """Context manager around one MLflow run.

    Args:
        uri: tracking URI; the default ``sqlite:///mlflow.db`` is what ``mlflow ui`` opens in the same folder.
        experiment: MLflow experiment name.
        run_name: run name shown in the UI.
        extra_params: config keys logged as params beyond the compared ones (the command line's overrides).
    """

    def __init__(self, uri: str, experiment: str, run_name: str, log_model: bool = True,
                 tags: Mapping[str, str] | None = None, resume_run_id: str | None = None,
                 system_metrics: bool = True, register_model: str | None = None,
                 model_alias: str = "candidate", extra_params: Sequence[str] = ()) -> None:
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.should_log_model, self.tags = log_model, dict(tags or {})
        self.run_id: str | None = resume_run_id
        self.system_metrics, self.register_model, self.model_alias = system_metrics, register_model, model_alias
        self.extra_params = list(extra_params)
        self._previous_sigterm: Any = None

    def __enter__(self) -> MlflowTracker:
        """Start the run (or reopen ``resume_run_id``), after marking runs whose process died KILLED."""
        open_store(self.uri)
        experiment_id = get_or_create_experiment(self.experiment)
        mark_orphaned_runs_killed(self.experiment)
        if mlflow.active_run() is not None:  # left over by a crashed job in this process (Hydra -m)
            mlflow.end_run(status="FAILED")
        owner = {"medtl.host": socket.gethostname(), "medtl.pid": str(os.getpid()), "medtl.pid_start": _start_time()}
        parent = os.environ.get(PARENT_RUN_ENV)  # set by the -m sweep's callback: this run is one of its children
        owner.update({"mlflow.parentRunId": parent} if parent else {})
        if self.run_id is None:
            self.run_id = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name,
                                           tags={**self.tags, **owner},
                                           log_system_metrics=self.system_metrics).info.run_id
        else:
            mlflow.start_run(run_id=self.run_id, log_system_metrics=self.system_metrics)
            mlflow.set_tags(owner)
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

    def log_config(self, cfg: DictConfig, trains_on_features: bool = False) -> None:
        """Log the params a person compares (:func:`~medtl.tracking.params.compared_params`, plus
        ``extra_params``) and the whole resolved config as the ``config.yaml`` artefact."""
        params = compared_params(cfg, trains_on_features, dataset_name(cfg), self.extra_params)
        self.log_params({key: _param_text(value) for key, value in params.items()})
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), artifacts.CONFIG)

    def log_missing_epochs(self, history: list[dict[str, float]]) -> None:
        """Log the epochs of a resumed run's ``history`` that the store lacks: the training state is saved
        before an epoch's metrics are logged, so a kill between the two leaves one epoch to fill in here,
        and none is ever logged twice."""
        if not history:
            return
        key = next(iter(history[0]))
        logged = {m.step for m in mlflow.MlflowClient().get_metric_history(self.run_id, key)}
        for step, metrics in enumerate(history):
            if step not in logged:
                self.log_metrics(metrics, step=step)

    def set_tag(self, key: str, value: str) -> None:
        mlflow.set_tag(key, value)

    def describe(self, tags: Mapping[str, str], description: str) -> None:
        """Tags to filter and group on, and the run's Description (``mlflow.note.content``) in the UI."""
        mlflow.set_tags({**tags, "mlflow.note.content": description})

    def log_datasets(self, inputs: list[tuple[str, Any]]) -> None:
        """``(context, mlflow dataset)`` pairs as the run's dataset inputs (training, validation, target...)."""
        for context, dataset in inputs:
            mlflow.log_input(dataset, context=context)

    def register(self, model_uri: str | None, card: str) -> str | None:
        """With ``register_model`` set: register the logged model under that name, point ``model_alias`` at the new
        version and give the version the model card as its description. Returns ``models:/<name>@<alias>``."""
        if not self.register_model or model_uri is None:
            return None
        version = mlflow.register_model(model_uri, self.register_model, tags={"medtl.run_id": str(self.run_id)})
        client = mlflow.MlflowClient()
        client.update_model_version(self.register_model, version.version, description=card)
        client.set_registered_model_alias(self.register_model, self.model_alias, version.version)
        mlflow.set_tag("medtl.registered_model", f"{self.register_model}/{version.version}")
        log.info("registered %s version %s as @%s", self.register_model, version.version, self.model_alias)
        return f"models:/{self.register_model}@{self.model_alias}"

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: _short(v) for k, v in params.items()})

    def log_data_check(self, report: Any, skipped: pd.DataFrame, names: CaseNames) -> None:
        """Log ``medtl.data.check``'s summary, its JSON report, warnings as tags and the skipped files, every path
        in them written as its case and every patient id as its pseudonym (``names``)."""
        if report is not None:
            self.log_metrics(report.summary())
            mlflow.log_text(names.scrub(report.to_json()), artifacts.DATA_CHECK)
            for index, warning in enumerate(report.warnings):
                mlflow.set_tag(f"medtl.warning.{index}", names.scrub(warning)[:MAX_PARAM_LENGTH])
        self.log_metrics({"data/skipped_files": len(skipped)})
        if len(skipped):
            listed = names.frame(skipped.assign(reason=names.scrub_all(skipped["reason"].astype(str))))
            self.log_frame(listed, artifacts.SKIPPED_FILES)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
        mlflow.log_metrics(finite, step=step)

    def log_figure(self, figure: Figure, name: str) -> None:
        mlflow.log_figure(figure, f"{artifacts.PLOTS}/{name}")
        plt.close(figure)

    def log_figures(self, figures: Mapping[str, Figure]) -> None:
        for name, figure in figures.items():
            self.log_figure(figure, name)

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
            info = mlflow.pytorch.log_model(model, name=artifacts.MODEL, input_example=input_example,
                                            metadata=dict(metadata), serialization_format="pt2",
                                            extra_files=[str(state_path)],
                                            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        mlflow.set_tag("medtl.model_uri", info.model_uri)
        return info.model_uri


def open_store(uri: str) -> None:
    """Point MLflow at ``uri``. A tracking server must answer first (one line naming the URI otherwise); a fresh
    SQLite store is created under a file lock, so two runs started at once on a new ``mlflow.db`` do not both
    try to create its tables."""
    mlflow.set_tracking_uri(uri)
    check_server(uri)
    if not uri.startswith("sqlite:///"):
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(database) + ".lock", timeout=600):
        mlflow.MlflowClient().search_experiments(max_results=1)  # creates and migrates the tables once


def get_or_create_experiment(name: str) -> str:
    """The id of experiment ``name``, created if new, and made the active one. Two processes creating the same new
    experiment at once both get its id: the loser of the race reads the winner's (``mlflow.set_experiment`` can
    instead fall back on an inherited ``MLFLOW_EXPERIMENT_ID`` and file the run under another experiment)."""
    client = mlflow.MlflowClient()
    for _ in range(5):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            mlflow.set_experiment(experiment_id=experiment.experiment_id)
            return experiment.experiment_id
        try:
            client.create_experiment(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    raise MedtlError(f"tracking.experiment={name}: could not be created or read in {mlflow.get_tracking_uri()}")


def check_server(uri: str) -> None:
    """For an ``http(s)://`` tracking URI: fail fast, in one line, when no MLflow server answers there (instead of
    minutes of client retries). Other URIs (files, SQLite) are left alone: nothing is created here."""
    if not uri.startswith(("http://", "https://")):
        return
    reason = health_problem(uri, timeout_s=10)
    if reason is None:
        return
    raise MedtlError(f"tracking.uri={uri}: no MLflow tracking server answers there ({reason}); start one "
                     "(python -m medtl.tracking.local_server, README 'Team mode') or set MLFLOW_TRACKING_URI")


def mark_orphaned_runs_killed(experiment: str) -> list[str]:
    """Runs of ``experiment`` left RUNNING by a process of this host that no longer exists (SIGKILL, power
    loss) are marked KILLED; returns their ids. A killed run stays resumable: ``trainer.resume=<run id>``."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    running = mlflow.search_runs([exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                 f"tags.`medtl.host` = '{host}'", output_format="list")
    killed = []
    for run in running:
        pid, started = run.data.tags.get("medtl.pid", ""), run.data.tags.get("medtl.pid_start", "")
        if pid.isdigit() and not _alive(int(pid), started):
            mlflow.MlflowClient().set_terminated(run.info.run_id, status="KILLED")
            log.warning("MLflow run %s was left RUNNING by process %s, which is gone: marked KILLED "
                        "(continue it with trainer.resume=%s)", run.info.run_id, pid, run.info.run_id)
            killed.append(run.info.run_id)
    return killed


def _start_time(pid: int | None = None) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for the same process."""
    try:
        return Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not started or _start_time(pid) in ("", started)


def _param_text(value: Any) -> str:
    """A param's value as the command line writes it: ``[a, b]`` for lists, ``{k: v}`` for maps."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_param_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_param_text(v) for v in value) + "]"
    return str(value)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _short(value: Any) -> str:
    text, suffix = str(value), "...(truncated)"
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - len(suffix)] + suffix
