"""Team mode: a real PostgreSQL (Debian's package, on loopback, in a temporary folder) behind a real
``mlflow server``; medtl trains, registers and predicts through it, and two processes log at once.

Without PostgreSQL installed these tests are skipped, unless ``MEDTL_REQUIRE_SERVICES=1`` (``.ci/run`` sets it
and installs PostgreSQL), where a missing server is a failure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from medtl.errors import MedtlError
from medtl.predict import predict
from medtl.tracking.local_server import LocalPostgres, MlflowServer
from medtl.tracking.mlflow_tracker import check_server
from medtl.train import train
from tests.conftest import compose_config, small_demo_overrides


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Path]]:
    """``(tracking URI, artefact folder)`` of a PostgreSQL-backed MLflow server for this module."""
    try:
        import psycopg  # noqa: F401
        postgres = LocalPostgres(Path(tempfile.mkdtemp(prefix="medtl-pg-")))  # /tmp: the postgres user reaches it
        postgres._run("pg_ctl", "--version")
    except (ImportError, MedtlError) as exc:
        if os.environ.get("MEDTL_REQUIRE_SERVICES") == "1":
            raise
        pytest.skip(f"no PostgreSQL here ({exc}); apt-get install postgresql, pip install 'medtl[server]'")
    root = Path(tempfile.mkdtemp(prefix="medtl-mlflow-"))
    try:
        with postgres, MlflowServer(postgres.uri, root / "artifacts", log_file=root / "server.log") as mlflow_server:
            yield mlflow_server.uri, root / "artifacts"
    finally:
        shutil.rmtree(postgres.data_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def test_train_register_and_predict_through_the_server(server: tuple[str, Path], tiny_overrides: list[str],
                                                       demo_manifest: Path, tmp_path: Path) -> None:
    uri, artefacts = server
    cfg = compose_config([*tiny_overrides, "tracking=server", f"tracking.uri={uri}",
                          "tracking.register_model=pneumonia_team", "tracking.experiment=team",
                          f"trainer.checkpoint_dir={tmp_path / 'ck'}"])
    metrics = train(cfg)
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("team").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.metrics["val/best_auroc"] == metrics["val/best_auroc"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/auroc")] == [0, 1, 2]
    assert run.data.params["model.strategy"] == "linear_probe"
    config_text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    assert "experiment_name: chest_xray" in config_text
    assert list(artefacts.rglob("config.yaml")) and list(artefacts.rglob("MLmodel"))  # stored by the server
    version = client.get_model_version_by_alias("pneumonia_team", "candidate")
    assert version.run_id == run.info.run_id and "**Intended use:**" in version.description
    out = predict(OmegaConf.create({"model": "models:/pneumonia_team@candidate", "input": str(demo_manifest),
                                    "output": str(tmp_path / "p.csv"), "batch_size": 16, "num_workers": 0,
                                    "device": "cpu", "tracking_uri": uri, "progress": False, "tta": False,
                                    "adaptation": "none"}))
    assert len(out) == len(pd.read_csv(demo_manifest)) and out["score"].between(0, 1).all()


def test_two_processes_log_to_the_server_at_once_and_lose_nothing(server: tuple[str, Path], demo_cache: Path,
                                                                   tmp_path: Path) -> None:
    uri, _ = server
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("another")  # MLflow exports MLFLOW_EXPERIMENT_ID: the children inherit it
    args = [sys.executable, "-m", "medtl.train", "+experiment=chest_xray", "model.strategy=linear_probe",
            *small_demo_overrides(demo_cache),
            "data.image_size=32", "data.check=false", "trainer.features.epochs=4", "trainer.progress=false",
            "tracking=server", f"tracking.uri={uri}", "tracking.experiment=team_concurrent",
            "tracking.log_model=false"]
    processes = [subprocess.Popen([*args, f"seed={seed}"], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-1500:] for _, err in results]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("team_concurrent").experiment_id])
    ids = [line.rsplit(" ", 1)[-1] for out, _ in results for line in out.splitlines() if line.startswith("MLflow run id")]
    # each run in the experiment it named, though the parent process's MLFLOW_EXPERIMENT_ID (set by MLflow) differs
    assert sorted(r.info.run_id for r in runs) == sorted(ids), [client.get_run(i).info.experiment_id for i in ids]
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2"]
    for run in runs:  # every epoch of both runs arrived, each once
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/auroc")] == [0, 1, 2, 3]
        assert {"val/final_auroc", "val/best_auroc", "data/inputs.used"} <= set(run.data.metrics)


def test_an_unreachable_server_is_one_line_naming_the_uri() -> None:
    with pytest.raises(MedtlError, match=r"tracking.uri=http://127.0.0.1:9: no MLflow tracking server answers"):
        check_server("http://127.0.0.1:9")
    check_server("sqlite:///never-created.db")  # not a server: nothing to check, nothing created
    assert not Path("never-created.db").exists()
