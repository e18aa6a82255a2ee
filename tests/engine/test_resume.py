"""Resume after a kill: a SIGKILLed training continues in the same MLflow run with no gap and no duplicated
step, and ends with the model an uninterrupted run with the same seed gives."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from medtl.engine.state import RunFolder, TrainingState, find_run_folder, prune_finished_runs
from medtl.errors import MedtlError
from medtl.tracking.mlflow_tracker import mark_orphaned_runs_killed
from medtl.train import train
from tests.conftest import compose_config, small_demo_overrides

EPOCHS = 4


def _overrides(demo_cache: Path, uri: str, checkpoints: Path) -> list[str]:
    return ["+experiment=chest_xray", *small_demo_overrides(demo_cache), "model.strategy=finetune",
            "data.image_size=48", "data.batch_size=16", "data.cache_workers=1", "data.check=false",
            f"trainer.max_epochs={EPOCHS}", "trainer.early_stopping_patience=10", "trainer.progress=false",
            "tracking.log_model=false", f"tracking.uri={uri}", f"trainer.checkpoint_dir={checkpoints}"]


# ``python -c KILL_AFTER <epochs> <overrides...>``: medtl.train that SIGKILLs itself as soon as the training state of
# epoch <epochs> is on disk, before that epoch's metrics reach MLflow (the worst moment: the store is one epoch
# behind the checkpoint). Deterministic, unlike a kill from outside that has to catch the run between epochs.
KILL_AFTER = """
import os, signal, sys
from medtl.engine import loop
from medtl.engine.state import RunFolder
from medtl.train import main

epochs, sys.argv = int(sys.argv[1]), ["medtl.train", *sys.argv[2:]]
save = loop.Trainer._save

def save_then_die(self, name, state):
    save(self, name, state)
    if name == RunFolder.LAST and state["epoch"] >= epochs:
        os.kill(os.getpid(), signal.SIGKILL)

loop.Trainer._save = save_then_die
main()
"""


def _kill_after_epochs(args: list[str], checkpoints: Path, epochs: int, cwd: Path) -> None:
    """Train with ``args`` until the state of ``epochs`` epochs is saved under ``checkpoints``, then SIGKILL."""
    done = subprocess.run([sys.executable, "-c", KILL_AFTER, str(epochs), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, f"training was not killed (exit {done.returncode}): {done.stderr[-2000:]}"
    (folder,) = checkpoints.iterdir()
    assert RunFolder(folder).load_last().epoch == epochs  # read as a resume reads it
    # tensors and plain values only: a bare torch.load reads it, with no MONAI allow-list (a MetaTensor in the state
    # once pickled its metadata's enums through `getattr`, and weights_only refused it)
    bare = subprocess.run([sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], weights_only=True)",
                           str(folder / RunFolder.LAST)], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 0, bare.stderr[-2000:]


def test_sigkilled_training_resumes_into_the_same_run_and_model(tmp_path: Path, demo_cache: Path) -> None:
    uri, checkpoints = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "checkpoints"
    args = _overrides(demo_cache, uri, checkpoints)
    _kill_after_epochs(args, checkpoints, 2, tmp_path)
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
    assert run.info.status == "RUNNING"  # the killed process could not say otherwise
    assert mark_orphaned_runs_killed("chest_xray") == [run.info.run_id]  # what the next command does first
    assert mlflow.get_run(run.info.run_id).info.status == "KILLED"

    resumed = subprocess.run([sys.executable, "-m", "medtl.train", *args, f"trainer.resume={run.info.run_id}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    runs = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
    assert [r.info.run_id for r in runs] == [run.info.run_id] and runs[0].info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/auroc")
    assert sorted(m.step for m in history) == list(range(EPOCHS))  # no gap, no duplicated step
    folder = checkpoints / run.info.run_id
    assert (folder / RunFolder.FINISHED).is_file() and not (folder / RunFolder.LAST).exists()

    straight = tmp_path / "straight"
    train(compose_config(_overrides(demo_cache, f"sqlite:///{straight / 'mlflow.db'}", straight / "checkpoints")))
    mlflow.set_tracking_uri(f"sqlite:///{straight / 'mlflow.db'}")
    (reference,) = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
    expected = mlflow.MlflowClient().get_metric_history(reference.info.run_id, "train/loss")
    got = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss")
    assert [round(m.value, 5) for m in sorted(got, key=lambda m: m.step)] == \
           [round(m.value, 5) for m in sorted(expected, key=lambda m: m.step)]
    ours = torch.load(folder / RunFolder.BEST, weights_only=True)
    theirs = torch.load(straight / "checkpoints" / reference.info.run_id / RunFolder.BEST, weights_only=True)
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key].float(), value.float(), atol=1e-5, rtol=1e-4)


def test_resuming_a_finished_run_or_an_unknown_one_is_one_line(tmp_path: Path, demo_cache: Path) -> None:
    uri, checkpoints = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "checkpoints"
    train(compose_config([*_overrides(demo_cache, uri, checkpoints), "trainer.max_epochs=1"]))
    (run_id,) = [p.name for p in checkpoints.iterdir()]
    with pytest.raises(MedtlError, match=f"run {run_id} already finished"):
        train(compose_config([*_overrides(demo_cache, uri, checkpoints), f"trainer.resume={run_id}"]))
    with pytest.raises(MedtlError, match="trainer.resume=nope: no run folder"):
        train(compose_config([*_overrides(demo_cache, uri, checkpoints), "trainer.resume=nope"]))


def test_a_damaged_training_state_is_named(tmp_path: Path) -> None:
    folder = RunFolder.create(tmp_path, "abc", "sqlite:///x.db", "seed: 1\n")
    (folder.path / RunFolder.LAST).write_bytes(b"")
    assert find_run_folder("abc", tmp_path).path == folder.path
    with pytest.raises(MedtlError, match=f"cannot read the training state {folder.path / RunFolder.LAST}"):
        folder.load_last()


def test_training_state_round_trips_tensors_only_and_replays_the_generators(tmp_path: Path) -> None:
    import random

    import numpy as np
    from monai.transforms import RandGaussianNoise

    noise = RandGaussianNoise(prob=1.0)
    noise.set_random_state(3)
    state = TrainingState(epoch=2, best_epoch=1, best_score=0.9, history=[{"loss": 1.0}, {"loss": 0.5}],
                          model=torch.nn.Linear(3, 2).state_dict(), rng=TrainingState.capture_rng([noise]))
    torch.save(state.state_dict(), tmp_path / "s.pt")
    loaded = TrainingState.from_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (loaded.epoch, loaded.best_epoch, loaded.history) == (2, 1, state.history)

    def draw() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(), random.random(), noise.R.rand()

    first = draw()
    TrainingState.restore_rng(loaded.rng, [noise])
    assert draw() == first


def test_finished_run_folders_beyond_the_retention_are_deleted(tmp_path: Path) -> None:
    folders = []
    for index in range(5):
        folder = RunFolder.create(tmp_path, f"run{index}", "sqlite:///x.db", "seed: 1\n")
        folder.save(RunFolder.BEST, {"w": torch.zeros(1)})
        folder.save(RunFolder.LAST, {"w": torch.zeros(1)})
        if index != 2:  # run2 was killed: resumable, never pruned
            folder.finish()
            os.utime(folder.path / RunFolder.FINISHED, (index, index))
        folders.append(folder.path)
    removed = prune_finished_runs(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["run0", "run1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run2", "run3", "run4"]
    assert (tmp_path / "run2" / RunFolder.LAST).is_file() and not (tmp_path / "run4" / RunFolder.LAST).exists()


def test_a_killed_run_with_group_dro_and_stateful_augmentation_resumes_to_the_same_losses(tmp_path: Path) -> None:
    """The objective's group weights, the augmentation's reservoirs and the generators of the per-batch acquisition
    (the loader's collation) are in the training state: after a SIGKILL the resumed run logs the training losses an
    uninterrupted run logs."""
    from tests.objectives.test_shortcut_training import confounded_set

    manifest = confounded_set(tmp_path / "data")

    def overrides(root: Path) -> list[str]:
        return [f"data.manifest={manifest}", "data.positive_class=lesion", "data.image_size=48", "data.batch_size=16",
                "data.cache_workers=1", "model.strategy=finetune", f"trainer.max_epochs={EPOCHS}",
                "trainer.early_stopping_patience=10", "trainer.progress=false", "tracking.log_model=false",
                "objective=group_dro", "data.augment.counterfactual_histogram=0.5", "data.augment.gamma=0.5",
                "data.augment.detector_resolution=0.5", "data.augment.acquisition_per_batch=true",
                f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"trainer.checkpoint_dir={root / 'checkpoints'}"]

    killed, straight = tmp_path / "killed", tmp_path / "straight"
    _kill_after_epochs(overrides(killed), killed / "checkpoints", 2, tmp_path)
    (run_id,) = [p.name for p in (killed / "checkpoints").iterdir()]
    resumed = subprocess.run([sys.executable, "-m", "medtl.train", *overrides(killed), f"trainer.resume={run_id}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    train(compose_config(overrides(straight)))
    mlflow.set_tracking_uri(f"sqlite:///{straight / 'mlflow.db'}")
    (reference,) = mlflow.search_runs(experiment_names=["medtl"], output_format="list")
    for metric in ("train/loss", "train/worst_group_loss"):
        expected = mlflow.MlflowClient().get_metric_history(reference.info.run_id, metric)
        got = mlflow.MlflowClient(f"sqlite:///{killed / 'mlflow.db'}").get_metric_history(run_id, metric)
        assert len(got) == EPOCHS
        assert [round(m.value, 5) for m in sorted(got, key=lambda m: m.step)] == \
               [round(m.value, 5) for m in sorted(expected, key=lambda m: m.step)], metric
