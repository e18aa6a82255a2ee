"""hydra/launcher=slurm: the composed launcher, the sbatch script submitit would write from it, and a real -m run
through submitit's local executor with two tasks training together (trainer=ddp). No SLURM cluster is reached."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the cluster extra: pip install -e '.[cluster]'")


def launcher(overrides: list[str]) -> dict:
    cfg = compose_config(["+experiment=chest_xray", "trainer=ddp", "hydra/launcher=slurm", *overrides],
                         return_hydra_config=True)
    chosen = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)  # the sweep dir resolves only at run time
    chosen["tasks_per_node"] = cfg.hydra.launcher.tasks_per_node  # ${.gpus_per_node}, resolved by OmegaConf
    return chosen


def test_the_slurm_launcher_composes_with_one_task_per_gpu() -> None:
    chosen = launcher(["hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4", "hydra.launcher.nodes=2"])
    assert chosen["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (chosen["partition"], chosen["gpus_per_node"], chosen["nodes"], chosen["tasks_per_node"]) == ("gpu", 4, 2, 4)
    assert chosen["timeout_min"] == 240


def test_the_sbatch_script_asks_for_what_the_config_says(tmp_path: Path) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    chosen = launcher(["hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"])
    script = _make_sbatch_string(command="python -m medtl.train", folder=tmp_path, partition=chosen["partition"],
                                 gpus_per_node=chosen["gpus_per_node"], ntasks_per_node=chosen["tasks_per_node"],
                                 nodes=chosen["nodes"], time=chosen["timeout_min"], cpus_per_task=chosen["cpus_per_task"],
                                 mem=f"{chosen['mem_gb']}GB")
    for line in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--time=240", "--cpus-per-task=8",
                 "--mem=64GB"):
        assert f"#SBATCH {line}" in script, line


def test_a_sweep_job_of_two_local_tasks_trains_as_two_ranks(tiny_overrides: list[str], tmp_path: Path) -> None:
    """submitit's local executor sets the task variables SLURM would (``SUBMITIT_LOCAL_*`` for ``SLURM_*``); the two
    tasks become ranks 0 and 1 of one data-parallel job, and rank 0 alone logs the sweep's one child run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [o for o in tiny_overrides if not o.startswith("tracking.uri")]
    command = [sys.executable, "-m", "medtl.train", "-m", *overrides, f"tracking.uri={uri}", "trainer=ddp",
               "trainer.max_epochs=1", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
               "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    logs = "\n".join(p.read_text() for p in (tmp_path / "sweep").rglob("*_log.*"))
    assert done.returncode == 0, done.stderr[-2000:] + logs[-3000:]
    assert "data-parallel: 2 processes on cpu (gloo)" in logs
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert 0.5 <= children[0].data.metrics["val/final_auroc"] <= 1.0
