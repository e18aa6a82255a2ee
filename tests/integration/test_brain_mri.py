"""Real brain MRI slices (../shared/data/brain_mri), four classes: a small linear probe must learn."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from medtl.train import train
from medtl.training import final_validation
from tests.conftest import SHARED_DATA, compose_config

BRAIN = SHARED_DATA / "brain_mri"
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (BRAIN / "train").is_dir(), reason="../shared/data/brain_mri absent")]


def test_four_class_linear_probe_on_300_images(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(["+experiment=brain_mri", "model.strategy=linear_probe", f"data.root={BRAIN}",
                          "data.max_images=300", "data.image_size=128",
                          "trainer.progress=false", f"tracking.uri={uri}", "tracking.log_model=false"])
    metrics = train(cfg)
    assert set(final_validation(metrics)) == {"auroc", "accuracy", "balanced_accuracy"}
    assert metrics["val/final_auroc"] > 0.85 and metrics["val/final_balanced_accuracy"] > 0.5, metrics  # chance: 0.5 and 0.25
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["brain_mri"], output_format="list")[0]
    preds = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="val_predictions.csv"))
    assert list(preds.columns) == ["case", "label", "pred", "score_glioma", "score_meningioma", "score_notumor",
                                   "score_pituitary", "patient", "split"]


def test_brain_mri_da_tumour_vs_no_tumour_with_adabn_on_a_simulated_site(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(["+experiment=brain_mri_da", f"data.source={BRAIN / 'train'}", "adaptation=adabn",
                          "model.strategy=linear_probe", "data.max_images=300", "data.image_size=96",
                          f"data.sites_dir={tmp_path / 'sites'}", "data.target_simulation.fraction=0.1",
                          "trainer.progress=false", f"tracking.uri={uri}", "tracking.log_model=false"])
    metrics = train(cfg)
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["brain_mri_da"], output_format="list")[0]
    assert run.data.metrics["data/n_images.target_test.tumour"] > 0 and "data/n_images.target_test.no_tumour" in run.data.metrics
    assert metrics["val/final_auroc"] > 0.85 and metrics["target/auroc"] > 0.6, metrics
    assert 0.0 <= metrics["target/adapt_seconds"] < 60
    target = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                             artifact_path="target_predictions.csv"))
    assert set(target["label"]) == {"tumour", "no_tumour"} and list(target.columns) == ["case", "label", "score", "pred",
                                                                                   "patient", "split"]
