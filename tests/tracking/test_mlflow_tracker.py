from __future__ import annotations

import os
import signal
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from medtl.tracking import MlflowTracker
from medtl.tracking.mlflow_tracker import MAX_PARAM_LENGTH


def statuses(uri: str) -> list[str]:
    mlflow.set_tracking_uri(uri)
    return [r.info.status for r in mlflow.search_runs(experiment_names=["t"], output_format="list")]


def test_back_to_back_runs_are_separate_and_logged_config_is_complete(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = OmegaConf.create({"experiment_name": "t", "data": {"root": "/data/site_a"}, "model": {"lr": 0.1, "layers": [1, 2]},
                            "notes": "y" * 1000, "plumbing": {"dir": "/x"}})
    ids = []
    for name in ("first", "second"):
        with MlflowTracker(uri, "t", name, extra_params=["model.lr", "model.layers", "notes"]) as tracker:
            tracker.log_config(cfg)
            tracker.log_metrics({"m": 1.0, "nan_is_skipped": float("nan")}, step=0)
            ids.append(tracker.run_id)
    assert len(set(ids)) == 2 and statuses(uri) == ["FINISHED", "FINISHED"]
    run = mlflow.get_run(ids[1])
    params = run.data.params
    assert run.info.run_name == "second" and params["model.lr"] == "0.1" and params["model.layers"] == "[1, 2]"
    assert len(params["notes"]) == MAX_PARAM_LENGTH and params["notes"].endswith("(truncated)")
    assert "plumbing.dir" not in params and params["data.name"] == "site_a"
    assert set(run.data.metrics) == {"m"}
    text = mlflow.artifacts.load_text(f"runs:/{ids[1]}/config.yaml")
    assert "y" * 1000 in text and "/x" in text  # the whole config survives in the artefact


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
