"""A tiny end-to-end run on the demo DICOM set: MLflow run, artefacts, logged model, predict."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from medtl.predict import predict
from medtl.train import train
from medtl.training import final_validation
from tests.conftest import compose_config


@pytest.fixture
def trained_run(tiny_overrides: list[str], tmp_path: Path) -> dict:
    cfg = compose_config(tiny_overrides)
    metrics = train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")[0]
    return {"cfg": cfg, "metrics": metrics, "run": run}


def test_train_logs_a_finished_run_with_metrics_artefacts_and_model(trained_run: dict) -> None:
    run, metrics = trained_run["run"], trained_run["metrics"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "chest_xray-linear_probe"
    assert set(metrics) == {"val/final_auroc", "val/final_accuracy", "val/final_sensitivity", "val/final_specificity",
                            "val/final_threshold", "val/final_ece", "val/final_brier", "val/best_auroc", "val/best_epoch",
                            "train/epochs", "train/seconds"}
    assert metrics["train/epochs"] == 3  # the head's epochs on cached features, not trainer.max_epochs
    assert 0.0 <= metrics["val/final_auroc"] <= 1.0
    for key in ("train/loss", "val/auroc", "val/final_auroc", "val/final_sensitivity", "val/best_auroc", "val/best_epoch",
                "train/epochs", "data/inputs.used"):
        assert key in run.data.metrics
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/auroc")
    assert [m.step for m in history] == [0, 1, 2]  # trainer.features.epochs=3 (cached-feature linear probe)
    assert run.data.params["model.strategy"] == "linear_probe"
    assert run.data.params["trainer.features.epochs"] == "3" and "trainer.max_epochs" not in run.data.params
    client = mlflow.MlflowClient()
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artefacts |= {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"config.yaml", "val_predictions.csv", "plots/roc_curve.png", "plots/confusion_matrix.png",
            "data_check.json"} <= artefacts
    assert run.data.metrics["data_check/unreadable"] == 0 and run.data.metrics["data/skipped_files"] == 0
    preds = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="val_predictions.csv"))
    assert list(preds.columns) == ["case", "label", "score", "pred", "patient", "split"]
    assert set(preds["split"]) == {"val"} and preds["case"].str.match(r"^(NORMAL|PNEUMONIA)/img_\d+\.dcm$").all()
    assert preds["score"].between(0, 1).all() and set(preds["label"]) == {"NORMAL", "PNEUMONIA"}
    assert run.data.tags["medtl.model_uri"].startswith("models:/")


def test_no_patient_identifiers_reach_mlflow(trained_run: dict, demo_manifest: Path, tmp_path: Path) -> None:
    run = trained_run["run"]
    identifiers = set(pd.read_csv(demo_manifest)["patient_id"])  # also the DICOM PatientID / PatientName
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "art")))
    texts = [p.read_text(errors="ignore") for p in local.rglob("*") if p.is_file()]
    texts += [str(run.data.params), str(run.data.tags)]
    assert not any(pid in text for pid in identifiers for text in texts)


def test_predict_with_the_logged_model(trained_run: dict, demo_manifest: Path, tmp_path: Path) -> None:
    cfg, run = trained_run["cfg"], trained_run["run"]
    out = tmp_path / "preds.csv"
    predict_cfg = OmegaConf.create({"model": run.data.tags["medtl.model_uri"], "input": str(demo_manifest.parent),
                                    "output": str(out), "batch_size": 8, "num_workers": 0, "device": "cpu",
                                    "tracking_uri": cfg.tracking.uri, "progress": False, "tta": False})
    frame = predict(predict_cfg)
    written = pd.read_csv(out)
    assert list(written.columns) == ["path", "label", "score", "pred"]
    assert len(written) == len(pd.read_csv(demo_manifest)) == len(frame)
    assert written["score"].between(0, 1).all() and written["score"].std() > 0
    val = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="val_predictions.csv"))
    written["case"] = [os.path.relpath(p, demo_manifest.parent) for p in written["path"]]  # demo names carry no id
    merged = val.merge(written, on="case", suffixes=("_val", "_pred"))
    assert len(merged) == len(val)
    assert (merged["score_val"] - merged["score_pred"]).abs().max() < 1e-4  # same preprocessing, same model
    assert (merged["pred_val"] == merged["pred_pred"]).all()  # the model's stored validation threshold


@pytest.mark.parametrize("strategy", ["linear_probe", "finetune"])  # finetune: the recipe (LP-FT, frozen stages)
def test_training_is_deterministic_when_seeded(tiny_overrides: list[str], strategy: str) -> None:
    overrides = [*tiny_overrides, f"model.strategy={strategy}", "trainer.max_epochs=1", "trainer.max_steps_per_epoch=3",
                 "tracking.log_model=false"]
    first, second = (train(compose_config(overrides)) for _ in range(2))
    assert first.pop("train/seconds") > 0 and second.pop("train/seconds") > 0  # wall time is not seeded
    assert first == pytest.approx(second)


def test_demo_data_is_learnable_to_auroc_090(tmp_path: Path, demo_cache: Path) -> None:
    """The default demo set (240 patients), at a smaller size than `make demo` uses, still learns."""
    cfg = compose_config(["+experiment=chest_xray", f"data.demo_dir={demo_cache}", "data.image_size=128",
                          "trainer.max_epochs=4", "trainer.progress=false", "tracking.log_model=false",
                          f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert train(cfg)["val/final_auroc"] >= 0.9


def test_training_from_the_disk_cache(tiny_overrides: list[str], tmp_path: Path) -> None:
    overrides = [*tiny_overrides, "trainer.max_epochs=1", "tracking.log_model=false", "data.cache=disk",
                 f"data.cache_dir={tmp_path / 'cache'}"]
    first = final_validation(train(compose_config(overrides)))
    assert len(list((tmp_path / "cache").glob("*.pt"))) > 0
    assert final_validation(train(compose_config(overrides))) == pytest.approx(first)  # same, read back from disk


def test_final_evaluation_with_tta(tiny_overrides: list[str]) -> None:
    overrides = [*tiny_overrides, "trainer.max_epochs=1", "trainer.features.epochs=2", "tracking.log_model=false"]
    plain = train(compose_config(overrides))
    with_tta = train(compose_config([*overrides, "evaluation.tta=true"]))
    assert 0.0 <= with_tta["val/final_auroc"] <= 1.0
    assert with_tta != pytest.approx(plain)  # same model and data; the averaged views change the scores


def test_an_external_site_is_scored_at_the_validation_threshold(tiny_overrides: list[str], demo_manifest: Path,
                                                                 tmp_path: Path) -> None:
    """The recipe's pieces (LP-FT, frozen stages, weight average, acquisition augmentation) through the config,
    and an external site (demo images through the mild acquisition shift) evaluated after training."""
    from medtl.data.manifest import write_manifest
    from medtl.data.shift import shift_for, write_shifted_site

    rows = pd.read_csv(demo_manifest).groupby("label").head(12).reset_index(drop=True)
    rows["path"] = [str((demo_manifest.parent / p).resolve()) for p in rows["path"]]
    site = write_shifted_site(rows, tmp_path / "site_b", shift_for("mild"), seed=1, progress=False)
    write_manifest(site[["path", "label", "patient_id"]], tmp_path / "site_b.csv")
    overrides = [*tiny_overrides, "model.strategy=finetune", "model.frozen_stages=3", "trainer.max_epochs=1",
                 "trainer.linear_probe_first=true", "trainer.ema_decay=0.9", "data.augment.gamma=0.3",
                 "data.augment.blur=1.0", f"+evaluation.external.site_b={tmp_path / 'site_b.csv'}",
                 "evaluation.external_adabn=true"]
    metrics = train(compose_config(overrides))
    assert {"external/site_b/auroc", "external/site_b/accuracy", "external/site_b/threshold"} <= set(metrics)
    # AdaBN's scores at the threshold validation chose under AdaBN (the validation images' own statistics)
    assert metrics["external/site_b/adabn_threshold"] == metrics["val/adabn_threshold"]
    assert metrics["val/adabn_threshold"] != metrics["val/final_threshold"]  # the statistics moved the scores
    assert 0.0 <= metrics["val/adabn_accuracy"] <= 1.0 and 0.0 <= metrics["val/adabn_auroc"] <= 1.0
    assert metrics["external/site_b/adabn_brier"] != metrics["external/site_b/brier"]  # other statistics, other scores
    assert metrics["external/site_b/threshold"] == metrics["val/final_threshold"]  # the source's operating point
    cfg = compose_config(overrides)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")[0]
    assert run.data.params["trainer.linear_probe_first"] == "True" and run.data.params["model.frozen_stages"] == "3"
    assert run.data.params["data.augment.gamma"] == "0.3" and run.data.params["trainer.ema_decay"] == "0.9"
    assert "probe/val/auroc" in run.data.metrics and run.data.metrics["data/n_images.external_site_b.NORMAL"] == 12
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                            artifact_path="external_site_b_predictions.csv"))
    assert len(table) == 24 and set(table["split"]) == {"external_site_b"}
    assert not set(table["patient"]) & set(rows["patient_id"])  # pseudonyms, not the ids
    adapted = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                              artifact_path="external_site_b_adabn_predictions.csv"))
    assert list(adapted["case"]) == list(table["case"]) and not adapted["score"].equals(table["score"])
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert {"plots/external_site_b_adabn_roc_curve.png", "plots/external_site_b_roc_curve.png"} <= plots
    for prefix in ("", "adabn_"):  # no threshold beats the best one on the set's own labels
        assert metrics[f"external/site_b/{prefix}oracle_accuracy"] >= metrics[f"external/site_b/{prefix}accuracy"]
    (tmp_path / "unlabelled.csv").write_text(f"path,patient_id\n{site['path'][0]},p1\n")
    with pytest.raises(Exception, match="evaluation.external.other=.* 1 image.s. have no label"):
        train(compose_config([*tiny_overrides, f"+evaluation.external.other={tmp_path / 'unlabelled.csv'}"]))
    write_manifest(rows[["path", "label", "patient_id"]], tmp_path / "training_images.csv")
    with pytest.raises(Exception, match="evaluation.external.same: 24 of its 24 images are also training or valid"):
        train(compose_config([*tiny_overrides, f"+evaluation.external.same={tmp_path / 'training_images.csv'}"]))
