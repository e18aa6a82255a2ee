"""Prediction-time AdaBN: a delivered model adapts to a folder of a new site's images without training,
exactly as the training run's AdaBN evaluation did."""
from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from medtl.data.domains import read_target_frame
from medtl.data.pseudonym import CaseNames
from medtl.data.shift import shift_for, write_shifted_site
from medtl.errors import MedtlError
from medtl.predict import load_model, predict
from medtl.train import train
from tests.conftest import compose_config, small_demo_overrides


@pytest.fixture
def site_folder(tmp_path: Path, demo_manifest: Path) -> Path:
    """24 demo images written as a strongly shifted site: a plain folder of DICOM files, no labels."""
    frame = pd.read_csv(demo_manifest).head(24)
    frame["path"] = [str(demo_manifest.parent / p) for p in frame["path"]]
    write_shifted_site(frame, tmp_path / "site", shift_for("strong"), seed=0, progress=False)
    return tmp_path / "site"


@pytest.fixture
def adabn_run(tmp_path: Path, demo_cache: Path, site_folder: Path) -> dict:
    cfg = compose_config([
        "+experiment=chest_xray_da", "adaptation=adabn", f"data.target={site_folder}",
        *small_demo_overrides(demo_cache),
        "data.image_size=48", "data.batch_size=8", "data.cache_workers=1", "data.check=false",
        "trainer.max_epochs=1", "trainer.max_steps_per_epoch=3", "trainer.progress=false",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(experiment_names=["chest_xray_da"], output_format="list")[0]
    return {"cfg": cfg, "run": run}


def _predict(run: dict, folder: Path, out: Path, adaptation: str, model: str | None = None) -> pd.DataFrame:
    cfg = OmegaConf.create({"model": model or run["run"].data.tags["medtl.model_uri"], "input": str(folder),
                            "output": str(out), "batch_size": 8, "num_workers": 0, "device": "cpu",
                            "tracking_uri": run["cfg"].tracking.uri, "progress": False, "tta": False,
                            "adaptation": adaptation})
    return predict(cfg)


def test_predict_adabn_matches_the_training_run_and_differs_from_plain(adabn_run: dict, site_folder: Path,
                                                                       tmp_path: Path) -> None:
    run_id = adabn_run["run"].info.run_id
    trained = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="target_predictions.csv"))
    adapted = _predict(adabn_run, site_folder, tmp_path / "adabn.csv", "adabn")
    plain = _predict(adabn_run, site_folder, tmp_path / "plain.csv", "none")
    assert len(adapted) == len(trained) == 24 and adapted["label"].isna().all() | adapted["label"].eq("").all()
    names = CaseNames([(read_target_frame(str(site_folder), []), site_folder)])  # as the run named the site's files
    merged = trained.merge(adapted.assign(case=[names.case(p) for p in adapted["path"]]), on="case",
                           suffixes=("_train", "_predict"))
    assert len(merged) == 24
    assert (merged["score_train"] - merged["score_predict"]).abs().max() < 1e-4
    assert (adapted["score"] - plain["score"]).abs().max() > 1e-3  # BatchNorm statistics did change
    card = load_model(adabn_run["run"].data.tags["medtl.model_uri"], adabn_run["cfg"].tracking.uri)[1]
    assert card.adabn_threshold == pytest.approx(adabn_run["run"].data.metrics["val/adabn_threshold"])
    assert card.adabn_threshold != card.threshold  # validation under AdaBN chose its own operating point
    for frame, threshold in ((adapted, card.adabn_threshold), (plain, card.threshold)):
        assert list(frame["pred"]) == [card.classes[int(s >= threshold)] for s in frame["score"]]
    assert list(merged["pred_train"]) == list(merged["pred_predict"])  # the run's target table used it too


def test_predict_refuses_training_methods_and_models_without_eager_weights(adabn_run: dict, site_folder: Path,
                                                                            tmp_path: Path) -> None:
    with pytest.raises(MedtlError, match="config key adaptation='dann' is not allowed; use one of none, adabn"):
        _predict(adabn_run, site_folder, tmp_path / "x.csv", "dann")
    local = Path(mlflow.artifacts.download_artifacts(adabn_run["run"].data.tags["medtl.model_uri"],
                                                     dst_path=str(tmp_path / "model")))
    shutil.rmtree(local / "extra_files")
    with pytest.raises(MedtlError, match="has no eager weights"):
        _predict(adabn_run, site_folder, tmp_path / "x.csv", "adabn", model=str(local))
    assert not (tmp_path / "x.csv").exists()
