"""Volumes end to end: train on generated NIfTI phantoms, predict on NIfTI files and DICOM series folders."""
from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from medtl.data.volume_shift import VOLUME_SITES, simulate_volume, write_dicom_series
from medtl.predict import load_model, predict
from medtl.train import train
from tests.conftest import SMALL_VOLUME_DEMO, compose_config


@pytest.fixture
def volume_run(tmp_path: Path, demo_cache: Path, volume_demo_manifest: Path) -> dict:
    cfg = compose_config([
        "+experiment=mri_sequence", f"data.demo_dir={demo_cache}", f"data.demo.n_subjects={SMALL_VOLUME_DEMO.n_subjects}",
        f"data.demo.seed={SMALL_VOLUME_DEMO.seed}", "data.pipeline.spacing=[6.0,6.0,6.0]",
        "data.pipeline.shape=[32,32,28]", "model.slices.count=4", "model.strategy=finetune",
        "model.slices.pooling=attention",
        "trainer.max_epochs=1", "trainer.progress=false", "data.cache_workers=1",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    metrics = train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(experiment_names=["mri_sequence"], output_format="list")[0]
    return {"cfg": cfg, "metrics": metrics, "run": run, "manifest": volume_demo_manifest}


def test_volume_model_trains_logs_its_pipeline_and_predicts_files_and_series(volume_run: dict, tmp_path: Path) -> None:
    run, cfg = volume_run["run"], volume_run["cfg"]
    assert run.info.status == "FINISHED" and 0.0 <= volume_run["metrics"]["val/final_auroc"] <= 1.0
    preds = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="val_predictions.csv"))
    assert preds["case"].str.match(r"^(T1|FLAIR)/p-[0-9a-f]{16}_(T1|FLAIR)\.nii\.gz$").all()  # subject ids pseudonymised
    model_uri = run.data.tags["medtl.model_uri"]
    _, card = load_model(model_uri, cfg.tracking.uri)
    assert card.preprocessing.pipeline["kind"] == "volume" and card.architecture.input_shape == (32, 32, 28)
    assert card.architecture.slices["pooling"] == "attention" and card.classes == ("T1", "FLAIR")

    inputs = _prediction_inputs(volume_run["manifest"], tmp_path / "inputs")
    out = predict(OmegaConf.create({"model": model_uri, "input": str(inputs), "output": str(tmp_path / "p.csv"),
                                    "tracking_uri": cfg.tracking.uri, "batch_size": 2, "num_workers": 0,
                                    "device": "cpu", "progress": False, "tta": True, "adaptation": "adabn"}))
    names = sorted(Path(p).name for p in out["path"])
    assert names == ["a.nii.gz", "b.nii.gz", "series_t1", "study#series-1", "study#series-2"]
    assert out["score"].between(0, 1).all() and set(out["pred"]) <= {"T1", "FLAIR"}
    skipped = pd.read_csv(tmp_path / "p_skipped.csv")
    assert list(skipped["reason"]) == ["not a volume (neither NIfTI nor a DICOM slice)"]  # notes.txt


def test_volume_domain_adaptation_trains_on_the_demo_and_scores_a_simulated_thick_slice_site(
        tmp_path: Path, demo_cache: Path, volume_demo_manifest: Path) -> None:
    """+experiment=mri_sequence_da: the target is a subject-disjoint share of the demo written as thick-slice DICOM
    series; AdaBN re-estimates the encoder's statistics on it, and the target is scored at the source threshold."""
    cfg = compose_config([
        "+experiment=mri_sequence_da", f"data.demo_dir={demo_cache}",
        f"data.demo.n_subjects={SMALL_VOLUME_DEMO.n_subjects}", f"data.demo.seed={SMALL_VOLUME_DEMO.seed}",
        f"data.sites_dir={tmp_path / 'sites'}", "data.target_simulation.fraction=0.3",
        "data.pipeline.spacing=[6.0,6.0,6.0]", "data.pipeline.shape=[32,32,28]", "model.slices.count=4",
        "trainer.max_epochs=1", "trainer.progress=false", "data.cache_workers=1",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    metrics = train(cfg)
    assert {"target/auroc", "target/accuracy_at_source_threshold", "target/unadapted_auroc"} <= set(metrics)
    assert 0.0 <= metrics["target/auroc"] <= 1.0
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(experiment_names=["mri_sequence_da"], output_format="list")[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "mri_sequence_da-adabn"
    target = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                              artifact_path="target_predictions.csv"))
    assert len(target) and target["case"].str.match(r"^(T1|FLAIR)/p-[0-9a-f]{16}_(T1|FLAIR)$").all()  # series folders


def _prediction_inputs(manifest: Path, folder: Path) -> Path:
    """Two NIfTI files, a folder holding one DICOM series, a folder holding two series and a stray text file."""
    rows = pd.read_csv(manifest)
    t1 = [str(manifest.parent / p) for p in rows.loc[rows["label"] == "T1", "path"]]
    flair = [str(manifest.parent / p) for p in rows.loc[rows["label"] == "FLAIR", "path"]]
    folder.mkdir(parents=True)
    shutil.copy(t1[0], folder / "a.nii.gz")
    shutil.copy(flair[0], folder / "b.nii.gz")
    site, rng = VOLUME_SITES["raw12_ras"], np.random.default_rng(0)
    write_dicom_series(*simulate_volume(t1[1], site, rng), folder / "series_t1")
    for number, source in ((1, t1[2]), (2, flair[2])):
        written = write_dicom_series(*simulate_volume(source, site, rng), folder / f"s{number}", series_number=number)
        (folder / "study").mkdir(exist_ok=True)
        for path in written.iterdir():
            shutil.move(path, folder / "study" / f"{number}_{path.name}")
        written.rmdir()
    (folder / "notes.txt").write_text("not a volume")
    return folder
