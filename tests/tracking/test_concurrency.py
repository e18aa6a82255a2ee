"""Two trainings started at once on a fresh SQLite store: both finish, each in its own folders."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow

from tests.conftest import small_demo_overrides


def test_two_runs_started_together_on_a_new_store_both_finish_apart(tmp_path: Path, demo_cache: Path,
                                                                    demo_manifest: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-m", "medtl.train", "+experiment=chest_xray", "model.strategy=linear_probe",
            *small_demo_overrides(demo_cache),
            "data.image_size=32", "data.check=false", "trainer.features.epochs=2", "trainer.progress=false",
            "tracking.log_model=false", f"tracking.uri={uri}"]
    processes = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-1500:] for _, err in results]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert len(list((tmp_path / "outputs" / "chest_xray").iterdir())) == 2  # Hydra folders: pid in the name
    assert sorted(p.name for p in (tmp_path / "outputs" / "checkpoints").iterdir()) == \
           sorted(r.info.run_id for r in runs)
