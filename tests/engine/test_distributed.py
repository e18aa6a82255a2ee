"""Data-parallel runtime: shards cover the data once and gather back in order, failures reach every rank, and a
2-process torchrun on the demo matches one process with exactly one MLflow run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from medtl.engine.distributed import Runtime, interleave
from medtl.errors import MedtlError
from medtl.objectives.group_dro import GroupDRO
from medtl.objectives.registry import SourceBatch
from medtl.train import train
from tests.conftest import compose_config


def test_interleave_undoes_the_round_robin_shards() -> None:
    items = np.arange(7 * 3).reshape(7, 3)
    parts = [items[r::3] for r in range(3)]  # 3, 2 and 2 rows
    np.testing.assert_array_equal(interleave(parts), items)
    torch.testing.assert_close(interleave([torch.as_tensor(p) for p in parts]), torch.as_tensor(items))
    assert interleave([list("adg"), list("be"), list("cf")]) == list("abcdefg")


def test_one_process_hands_back_what_it_was_given() -> None:
    runtime = Runtime(torch.device("cpu"))
    loader = DataLoader(list(range(5)), batch_size=2)
    assert runtime.is_main and not runtime.distributed
    assert runtime.shard(loader) is loader and runtime.train_loader(loader) is loader
    assert runtime.gather([1, 2], interleave) == [1, 2]
    assert runtime.on_main(lambda: 42) == 42
    assert runtime.wrap(model := torch.nn.Linear(2, 2)) is model


def test_a_torchrun_process_without_trainer_ddp_is_told_to_add_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MedtlError, match="WORLD_SIZE=2.*add trainer=ddp"):
        Runtime.from_environment("cpu", distributed=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_work(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a gloo job: what it saw of a 7-item set, what it gathered, what the others' failure did."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    runtime = Runtime.from_environment("cpu", distributed=True)
    loader = DataLoader(list(range(7)), batch_size=4)
    shard = [int(x) for batch in runtime.shard(loader) for x in batch]
    gathered = runtime.gather(shard, interleave)
    training = runtime.train_loader(loader, seed=3)
    runtime.set_epoch(training, 1)
    trained = [int(x) for batch in training for x in batch]
    parameter = torch.nn.Parameter(torch.zeros(2))
    parameter.grad = torch.full((2,), float(rank))
    runtime.average_gradients([parameter])
    torch.manual_seed(rank)  # different initial weights: wrapping must give every rank rank 0's
    model = torch.nn.Linear(3, 1)
    wrapped = runtime.wrap(model)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = torch.arange(12, dtype=torch.float32).reshape(4, 3)  # rank r trains on rows r and r + 2
    wrapped(inputs[rank::2]).pow(2).mean().backward()
    optimiser.step()
    weights = [float(v) for v in torch.cat([p.detach().flatten() for p in model.parameters()])]
    dro = _group_dro()
    for step in range(3):  # rank r holds rows r, r + 2, ... of each step's batch
        dro.loss(_dro_batch(step, rows=slice(rank, None, 2)))
    norm = torch.nn.BatchNorm1d(2)
    norm.running_mean.fill_(float(rank + 1))  # as a rank's own half-batches leave them
    runtime.share_buffers(norm)
    shared = runtime.on_main(lambda: {"report": "from rank 0"})
    try:
        runtime.on_main(lambda: (_ for _ in ()).throw(MedtlError("data.root=x has no images")))
        failure = None
    except MedtlError as error:
        failure = str(error)
    Path(out, f"{rank}.json").write_text(json.dumps({
        "shard": shard, "gathered": gathered, "trained": trained, "batch": training.batch_size,
        "grad": parameter.grad.tolist(), "shared": shared, "failure": failure, "weights": weights,
        "group_weights": dro.group_weights.tolist(), "running_mean": norm.running_mean.tolist()}))
    runtime.close()


def _group_dro() -> GroupDRO:
    dro = GroupDRO(step_size=0.5)
    dro.bind({"a": "site1", "b": "site2"}, num_classes=2)
    return dro


def _dro_batch(step: int, rows: slice) -> SourceBatch:
    """Step ``step``'s batch of 8 images (groups of both collections and classes, losses that differ by group)."""
    generator = torch.Generator().manual_seed(step)
    logits = torch.randn(8, 2, generator=generator) * torch.arange(1, 9).unsqueeze(1)
    labels, collections = torch.tensor([0, 1] * 4), torch.tensor([0, 0, 1, 1, 1, 1, 0, 1])
    return SourceBatch(torch.zeros(8, 4)[rows], logits[rows], labels[rows], collections[rows])


def test_two_gloo_ranks_share_the_work_and_the_failures(tmp_path: Path) -> None:
    mp.spawn(_rank_work, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert [r["shard"] for r in ranks] == [[0, 2, 4, 6], [1, 3, 5]]
    assert all(r["gathered"] == list(range(7)) for r in ranks)
    trained = ranks[0]["trained"] + ranks[1]["trained"]  # a shuffled epoch: every item, one padded repeat at most
    assert set(trained) == set(range(7)) and len(trained) == 8 and ranks[0]["batch"] == 2
    assert all(r["grad"] == [0.5, 0.5] for r in ranks)
    assert all(r["shared"] == {"report": "from rank 0"} for r in ranks)
    assert all(r["running_mean"] == [1.0, 1.0] for r in ranks)  # rank 0's statistics on both
    assert all(r["failure"] == "data.root=x has no images" for r in ranks)
    torch.manual_seed(0)  # one process, rank 0's initial weights, the whole batch: the same step
    model = torch.nn.Linear(3, 1)
    model(torch.arange(12, dtype=torch.float32).reshape(4, 3)).pow(2).mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    expected = [float(v) for v in torch.cat([p.detach().flatten() for p in model.parameters()])]
    for r in ranks:
        np.testing.assert_allclose(r["weights"], expected, rtol=1e-6)
    dro = _group_dro()  # group DRO in one process on each whole step: the weights both ranks hold
    for step in range(3):
        dro.loss(_dro_batch(step, rows=slice(None)))
    assert ranks[0]["group_weights"] == ranks[1]["group_weights"]
    np.testing.assert_allclose(ranks[0]["group_weights"], dro.group_weights.tolist(), rtol=1e-6)
    assert max(dro.group_weights.tolist()) > 0.3  # the steps did move the weights away from 1/4


def _torchrun(overrides: list[str], folder: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "medtl.train", *overrides, "trainer=ddp", f"hydra.run.dir={folder / 'hydra'}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=600)


def _only_run(uri: str, experiment: str = "chest_xray") -> mlflow.entities.Run:
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert len(runs) == 1, f"{len(runs)} MLflow runs; rank 0 alone should track"
    return runs[0]


# the encoder at 0.1 x the head's rate and no weight average: at the chest default's rate the per-rank drop-connect
# draws move the two processes' models far enough apart to change the AUROC of the demo's few validation images
# (0.42 against 0.92 at 0.3 x), and so does scoring the average of two steps (0.97 against 0.94, losses within 0.04)
EXACT = ["model.bn=freeze", "model.dropout=0", "data.augment.prob=0", "data.batch_size=48", "model.encoder_lr_mult=0.1",
         "trainer.ema_decay=null"]


@pytest.mark.parametrize("strategy, settings, loss_tolerance",
                         [("linear_probe", ["data.batch_size=8"], 1e-5), ("finetune", EXACT, 0.1)])
def test_two_cpu_processes_match_one(tiny_overrides: list[str], tmp_path: Path, strategy: str,
                                     settings: list[str], loss_tolerance: float) -> None:
    """Stated tolerances: AUROC and accuracy within 1e-4 of one process. The linear probe: features encoded in
    shards and gathered, the head trained alike on both ranks, so the losses agree to 1e-5 too. Fine-tuning (the
    recipe: probe first, then the unfrozen stages), with the demo's 48 training images in one global batch (24 per
    rank), so the averaged gradient is one process's, and with what differs by design switched off (BatchNorm batch
    statistics, each rank normalising its half-batch; dropout and augmentation draws; batch composition): the
    losses agree within 0.1, not exactly, because the MBConv blocks' stochastic depth (drop-connect) draws per rank.
    That the ranks' weights stay identical is checked exactly in the gloo test above."""
    overrides = [o for o in tiny_overrides if not o.startswith(("tracking.uri", "model.strategy"))]
    overrides += [f"model.strategy={strategy}", "trainer.max_epochs=2", *settings]
    single = train(compose_config([*overrides, f"tracking.uri=sqlite:///{tmp_path / 'one.db'}"]))
    uri = f"sqlite:///{tmp_path / 'two.db'}"
    done = _torchrun([*overrides, f"tracking.uri={uri}", f"trainer.checkpoint_dir={tmp_path / 'ckpt'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run, one = _only_run(uri), _only_run(f"sqlite:///{tmp_path / 'one.db'}")
    assert run.info.status == "FINISHED"
    for name in ("val/final_auroc", "val/final_accuracy", "val/best_auroc"):
        assert run.data.metrics[name] == pytest.approx(single[name], abs=1e-4), name
    for name in ("val/loss", "train/loss"):  # continuous, so sensitive to any difference in the weights
        assert run.data.metrics[name] == pytest.approx(one.data.metrics[name], abs=loss_tolerance), name
    assert len(list((tmp_path / "ckpt").iterdir())) == 1  # one run folder, rank 0's


@pytest.mark.parametrize("kind", ["dann", "volumes"])
def test_adaptation_methods_and_volumes_train_on_two_processes(kind: str, tmp_path: Path, demo_cache: Path,
                                                               volume_demo_manifest: Path) -> None:
    """DANN's discriminator lives outside the wrapped model (its gradients are averaged by hand) and its target
    stream is sharded too; volumes go through the same loop. Each: one finished run, its metrics in range."""
    from tests.conftest import SMALL_VOLUME_DEMO, small_demo_overrides

    if kind == "dann":
        overrides = ["+experiment=chest_xray_da", "adaptation=dann", *small_demo_overrides(demo_cache),
                     f"data.sites_dir={demo_cache / 'sites'}", "data.target_simulation.fraction=0.4",
                     "data.image_size=48", "data.batch_size=8", "trainer.max_steps_per_epoch=3"]
        experiment, metric = "chest_xray_da", "target/auroc"
    else:
        overrides = ["+experiment=mri_sequence", f"data.demo_dir={demo_cache}", "data.batch_size=4",
                     f"data.demo.n_subjects={SMALL_VOLUME_DEMO.n_subjects}", f"data.demo.seed={SMALL_VOLUME_DEMO.seed}",
                     "data.pipeline.spacing=[6.0,6.0,6.0]", "data.pipeline.shape=[32,32,28]", "model.slices.count=4",
                     "model.strategy=finetune"]
        experiment, metric = "mri_sequence", "val/final_auroc"
    uri = f"sqlite:///{tmp_path / 'two.db'}"
    common = ["data.cache_workers=1", "data.check=false", "trainer.max_epochs=1", "trainer.progress=false",
              "tracking.log_model=false", f"tracking.uri={uri}"]
    done = _torchrun([*overrides, *common], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = _only_run(uri, experiment)
    assert run.info.status == "FINISHED" and 0.0 <= run.data.metrics[metric] <= 1.0
