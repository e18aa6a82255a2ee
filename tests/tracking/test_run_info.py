"""A run describes itself for the MLflow UI: tags, description, dataset inputs without paths, system metrics,
and a registered model with an alias and a model card that predict can use by name."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from medtl.engine.metrics import auroc, bootstrap_ci
from medtl.predict import predict
from medtl.train import train
from tests.conftest import compose_config


@pytest.fixture
def registered_run(tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    cfg = compose_config([*tiny_overrides, "tracking.register_model=pneumonia_demo",
                          f"trainer.checkpoint_dir={tmp_path / 'ck'}"])
    train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return cfg, mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")[0]


def test_run_has_tags_description_inputs_and_system_metrics(registered_run: tuple) -> None:
    cfg, run = registered_run
    tags = run.data.tags
    assert tags["medtl.dataset"] == "chest_xray-demo" and tags["medtl.version"] == "0.1.0"
    assert tags["medtl.git_dirty"] in ("true", "false") and tags["medtl.git_commit"]
    assert tags["mlflow.note.content"].startswith("linear_probe of efficientnet_lite0 (ImageNet weights) on "
                                                  "chest_xray-demo: ")
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    assert {d.name for d in inputs.values()} == {"chest_xray-demo/train", "chest_xray-demo/val"}
    assert all("path" not in d.schema and ".dcm" not in d.profile for d in inputs.values())  # no file names
    assert any(key.startswith("system/") for key in run.data.metrics)


def test_registered_model_has_alias_card_and_predicts_by_name(registered_run: tuple, tmp_path: Path,
                                                               demo_manifest: Path) -> None:
    cfg, run = registered_run
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("pneumonia_demo", "candidate")
    assert version.run_id == run.info.run_id
    assert "AUROC 95% bootstrap CI" in version.description and "**Intended use:**" in version.description
    out = predict(OmegaConf.create({"model": "models:/pneumonia_demo@candidate", "input": str(demo_manifest),
                                    "output": str(tmp_path / "p.csv"), "batch_size": 16, "num_workers": 0,
                                    "device": "cpu", "tracking_uri": cfg.tracking.uri, "progress": False,
                                    "tta": False, "adaptation": "none"}))
    assert len(out) == len(pd.read_csv(demo_manifest))


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = labels * 0.6 + rng.normal(0, 0.5, 400)
    low, high = bootstrap_ci(labels, scores, n_resamples=300)
    assert low < auroc(labels, scores) < high and 0.02 < high - low < 0.2
