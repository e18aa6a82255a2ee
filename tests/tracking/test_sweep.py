"""A -m sweep folds into one parent MLflow run whose children are the jobs, with the summary on the parent."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd

from tests.conftest import small_demo_overrides


def test_sweep_has_one_parent_with_a_child_per_job_and_a_summary(tmp_path: Path, demo_cache: Path,
                                                                 demo_manifest: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "medtl.train", "-m", "+experiment=chest_xray", "model.strategy=linear_probe,scratch",
         *small_demo_overrides(demo_cache), "data.image_size=32", "data.check=false", "trainer.max_epochs=1",
         "trainer.features.epochs=2", "trainer.progress=false", "tracking.log_model=false", f"tracking.uri={uri}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("medtl.sweep") == "parent"]
    assert len(runs) == 3 and len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.params["model.strategy"] for c in children) == ["linear_probe", "scratch"]
    assert sorted(c.info.run_name.split()[1] for c in children) == ["linear_probe", "scratch"]  # readable names
    assert all(c.info.run_name.startswith("chest_xray ") and "image_size=32" in c.info.run_name for c in children)
    assert parent.info.status == "FINISHED" and "model.strategy=linear_probe,scratch" in \
        parent.data.tags["medtl.sweep_overrides"]
    summary = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                              artifact_path="sweep_summary.csv"))
    assert sorted(summary["model.strategy"]) == ["linear_probe", "scratch"]
    assert parent.data.metrics["val/best_auroc"] == summary["val/best_auroc"].max()
    by_strategy = {c.data.params["model.strategy"]: c.data for c in children}
    probe, scratch = by_strategy["linear_probe"], by_strategy["scratch"]  # Compare shows what each trained for
    assert probe.params["trainer.features.epochs"] == "2" and "trainer.max_epochs" not in probe.params
    assert scratch.params["trainer.max_epochs"] == "1" and "trainer.features.epochs" not in scratch.params
    assert probe.params["data.image_size"] == "32" and not [k for k in probe.params if "_target_" in k]
    assert all(0.0 <= run.metrics["val/best_auroc"] <= 1.0 and "val/final_auroc" in run.metrics
               for run in by_strategy.values())


def test_readable_run_name_keeps_what_the_command_line_changed() -> None:
    from medtl.train import readable_run_name

    name = readable_run_name("chest_xray", "finetune", "mmd", [
        "+experiment=chest_xray", "model.strategy=finetune", "data.root=../shared/data/chest_xray_kermany/",
        "trainer.max_epochs=5", "tracking.uri=sqlite:///x.db", "adaptation=mmd", "model.encoder=resnet18"])
    assert name == "chest_xray finetune mmd root=chest_xray_kermany max_epochs=5 resnet18"
    assert readable_run_name("chest_xray", "linear_probe", "none", []) == "chest_xray linear_probe"


def test_optuna_search_maximises_the_experiments_metric_target_auroc_for_da(tmp_path: Path, demo_cache: Path) -> None:
    """``hparams_search=optuna_da``: each trial a child run; Optuna's best value is the best child's target AUROC."""
    import yaml

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "medtl.train", "-m", "+experiment=chest_xray_da", "hparams_search=optuna_da",
         "hydra.sweeper.n_trials=2", *small_demo_overrides(demo_cache), f"data.sites_dir={tmp_path / 'sites'}",
         "data.image_size=32", "data.check=false", "trainer.max_epochs=1", "trainer.progress=false",
         "tracking.log_model=false", f"tracking.uri={uri}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["chest_xray_da"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("medtl.sweep") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert all("trainer.lr" in c.data.params and "adaptation.method" in c.data.params for c in children)
    results = yaml.safe_load(next((tmp_path / "multirun").rglob("optimization_results.yaml")).read_text())
    best_target = max(c.data.metrics["target/auroc"] for c in children)
    assert results["best_value"] == best_target
    assert parent.data.metrics["target/auroc"] == best_target
    summary = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                              artifact_path="sweep_summary.csv"))
    assert {"trainer.lr", "adaptation", "target/auroc"} <= set(summary.columns)
