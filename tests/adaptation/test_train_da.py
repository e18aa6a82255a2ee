"""Every adaptation method trains a few steps on the demo (source) and a simulated site (target) through
``medtl.train``, and logs source and target metrics, the domain distance and the feature picture."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from medtl.adaptation import list_adaptations
from medtl.errors import MedtlError
from medtl.train import train
from tests.conftest import compose_config, small_demo_overrides


@pytest.fixture
def da_overrides(tmp_path: Path, demo_cache: Path) -> list[str]:
    return [
        "+experiment=chest_xray_da",
        *small_demo_overrides(demo_cache),
        f"data.sites_dir={demo_cache / 'sites'}",
        "data.target_simulation.fraction=0.4",
        "data.image_size=48",
        "data.batch_size=8",
        "data.cache_workers=1",
        "data.check=false",
        "trainer.max_epochs=1",
        "trainer.max_steps_per_epoch=3",
        "trainer.progress=false",
        "tracking.log_model=false",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


def _only_run(cfg) -> mlflow.entities.Run:  # noqa: ANN001
    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    assert len(runs) == 1
    return runs[0]


@pytest.mark.parametrize("method", list_adaptations())
def test_every_method_trains_and_logs_both_domains(method: str, da_overrides: list[str]) -> None:
    cfg = compose_config([*da_overrides, f"adaptation={method}"])
    metrics = train(cfg)
    run = _only_run(cfg)
    assert run.info.status == "FINISHED" and run.info.run_name == f"chest_xray_da-{method}"
    assert run.data.tags["medtl.adaptation"] == method
    for key in ("val/final_auroc", "target/auroc", "target/accuracy_at_source_threshold", "target/proxy_a_distance"):
        assert 0.0 <= metrics[key] <= (2.0 if key == "target/proxy_a_distance" else 1.0), key
        assert key == "auroc" or run.data.metrics[key] == pytest.approx(metrics[key])
    client = mlflow.MlflowClient()
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/domain_features.png", "plots/target_roc_curve.png"} <= plots
    target = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                             artifact_path="target_predictions.csv"))
    assert target["score"].between(0, 1).all() and set(target["label"]) == {"NORMAL", "PNEUMONIA"}
    val = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="val_predictions.csv"))
    assert set(target["split"]) == {"test"} and not set(target["case"]) & set(val["case"])  # the simulated site's
    assert not target["case"].str.startswith("/").any()  # relative to the site's folder, never full paths
    trained_on_target = method not in ("none", "adabn", "target_oracle")
    assert ("train/adaptation_loss" in run.data.metrics) == trained_on_target
    if method == "dann":
        assert 0.0 <= run.data.metrics["train/domain_discriminator_accuracy"] <= 1.0


def test_entropy_stacks_on_another_method(da_overrides: list[str]) -> None:
    cfg = compose_config([*da_overrides, "adaptation=coral", "adaptation.entropy_weight=0.1"])
    train(cfg)
    assert _only_run(cfg).data.metrics["train/adaptation_loss"] > 0


def test_a_method_needing_a_target_refuses_plain_data(tiny_overrides: list[str]) -> None:
    with pytest.raises(MedtlError, match="adaptation=dann needs a target domain"):
        train(compose_config([*tiny_overrides, "adaptation=dann"]))


def test_a_method_adapting_the_encoder_refuses_a_frozen_one(da_overrides: list[str]) -> None:
    with pytest.raises(MedtlError, match="model.strategy=linear_probe"):
        train(compose_config([*da_overrides, "adaptation=mmd", "model.strategy=linear_probe"]))
