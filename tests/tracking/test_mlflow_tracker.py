from __future__ import annotations

import os
import signal
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from medtl.tracking import MlflowTracker, flatten_config
from medtl.tracking.mlflow_tracker import MAX_PARAM_LENGTH


def statuses(uri: str) -> list[str]:
    mlflow.set_tracking_uri(uri)
    return [r.info.status for r in mlflow.search_runs(experiment_names=["t"], output_format="list")]


def test_flatten_config_dots_keys_and_cuts_long_values() -> None:
    flat = flatten_config({"a": {"b": 1, "c": [1, 2]}, "long": "x" * 2000})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]"
    assert len(flat["long"]) == MAX_PARAM_LENGTH and flat["long"].endswith("(truncated)")


def test_back_to_back_runs_are_separate_and_logged_config_is_complete(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = OmegaConf.create({"model": {"lr": 0.1}, "notes": "y" * 1000})
    ids = []
    for name in ("first", "second"):
        with MlflowTracker(uri, "t", name) as tracker:
            tracker.log_config(cfg)
            tracker.log_metrics({"m": 1.0, "nan_is_skipped": float("nan")}, step=0)
            ids.append(tracker.run_id)
    assert len(set(ids)) == 2 and statuses(uri) == ["FINISHED", "FINISHED"]
    run = mlflow.get_run(ids[1])
    assert run.info.run_name == "second" and run.data.params["model.lr"] == "0.1"
    assert set(run.data.metrics) == {"m"}
    text = mlflow.artifacts.load_text(f"runs:/{ids[1]}/config.yaml")
    assert "y" * 1000 in text  # the full value survives in the artefact


def test_exception_marks_run_failed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(ValueError), MlflowTracker(uri, "t", "boom"):
        raise ValueError("boom")
    assert statuses(uri) == ["FAILED"]


def test_sigterm_marks_run_failed_and_restores_handler(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info, MlflowTracker(uri, "t", "killed"):
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.code == 128 + signal.SIGTERM
    assert statuses(uri) == ["FAILED"]
    assert signal.getsignal(signal.SIGTERM) == before
