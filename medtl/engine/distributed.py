"""Data-parallel training (``torchrun ... trainer=ddp``): which process this is, on which device, and how the
work and its results are shared.

One process is a :class:`Runtime` of world size 1 whose helpers hand back what they were given, so the training
loop has one code path. Under ``torchrun --nproc_per_node N`` each of the N processes holds one; they:

- train on disjoint shards of the training set (:class:`~torch.utils.data.DistributedSampler`, reshuffled each
  epoch), each with ``batch_size / N`` images, so the global batch is the single-process one, through
  :class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, NCCL on CUDA);
- predict and encode disjoint shards and gather the results in the original order, so validation metrics are
  the ones a single process computes on the same weights;
- leave MLflow, checkpoints and the data check to rank 0 (:attr:`Runtime.is_main`).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset, WeightedRandomSampler

from medtl.engine.runtime import resolve_device
from medtl.errors import MedtlError

__all__ = ["Runtime", "interleave"]

log = logging.getLogger(__name__)
T = TypeVar("T")
A = TypeVar("A", np.ndarray, torch.Tensor, list)


@dataclass(frozen=True)
class Runtime:
    """This process's place in a (possibly one-process) data-parallel job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that tracks, checkpoints and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str = "auto", distributed: bool = False) -> Runtime:
        """The runtime ``torchrun`` set up (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), with its process group joined;
        one process otherwise. A CUDA rank takes GPU ``LOCAL_RANK``; the backend is NCCL on CUDA, gloo on CPU."""
        if distributed:
            _export_scheduler_ranks()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not distributed:
            raise MedtlError(f"this process is one of WORLD_SIZE={world} started by torchrun, but trainer.distributed "
                             "is false: add trainer=ddp to the command (or run one process without torchrun)")
        chosen = resolve_device(device)
        if world == 1:
            if distributed:
                log.warning("trainer=ddp in a single process (no torchrun): training on one %s", chosen.type)
            return cls(chosen)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if chosen.type == "cuda":
            chosen = torch.device("cuda", local_rank)
            torch.cuda.set_device(chosen)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        if rank != 0:  # one process speaks; the others say only what goes wrong
            logging.getLogger("medtl").setLevel(logging.WARNING)
        log.info("data-parallel: %d processes on %s (%s)", world, chosen.type, dist.get_backend())
        return cls(chosen, rank, world, local_rank)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged over the ranks);
        ``model`` itself in one process. Call it again whenever the set of trainable parameters changes."""
        if not self.distributed or not any(p.requires_grad for p in model.parameters()):
            return model
        ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def train_loader(self, loader: DataLoader, seed: int = 0) -> DataLoader:
        """This rank's shuffled shard of ``loader``'s dataset, ``batch_size / world_size`` images per batch (call
        :meth:`set_epoch` before each epoch); ``loader`` itself in one process."""
        if not self.distributed:
            return loader
        if isinstance(getattr(loader, "sampler", None), WeightedRandomSampler):
            raise MedtlError("data.sampling=balanced is not supported with trainer=ddp yet (each rank would draw "
                             "from the whole set); use data.sampling=shuffle with objective=group_dro")
        sampler = DistributedSampler(loader.dataset, self.world_size, self.rank, shuffle=True, seed=seed)
        return _like(loader, loader.dataset, max(1, int(loader.batch_size or 1) // self.world_size), sampler)

    @staticmethod
    def set_epoch(loader: DataLoader, epoch: int) -> None:
        """Reshuffle a :meth:`train_loader` shard for ``epoch`` (every rank the same permutation, split)."""
        if isinstance(getattr(loader, "sampler", None), DistributedSampler):
            loader.sampler.set_epoch(epoch)

    def shard(self, loader: DataLoader) -> DataLoader:
        """Items ``rank, rank + N, rank + 2N, ...`` of ``loader``'s dataset, for :meth:`gather` to put back. Always
        in the dataset's order, also in one process: a shuffled loader read for prediction or encoding gives the
        same result on any number of ranks and draws nothing from the random generators."""
        if not self.distributed and not isinstance(getattr(loader, "sampler", None), RandomSampler):
            return loader  # already in order (or any iterable of batches)
        indices = range(self.rank, len(loader.dataset), self.world_size)
        return _like(loader, Subset(loader.dataset, indices) if self.distributed else loader.dataset,
                     loader.batch_size, None)

    def gather(self, part: T, join: Callable[[list[T]], T]) -> T:
        """Every rank's :meth:`shard` result ``part``, combined by ``join`` (a list in rank order); on every rank."""
        if not self.distributed:
            return part
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, part)
        return join(parts)

    def mean(self, value: float) -> float:
        """``value`` averaged over the ranks (every rank gets it); ``value`` in one process."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total) / self.world_size

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average the gradients of parameters outside the wrapped model (an adaptation method's discriminator)."""
        if not self.distributed:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
                parameter.grad /= self.world_size

    def share_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's buffers of ``module`` (BatchNorm statistics, which each rank updates from its own
        part of a batch): the ranks then score with the statistics of the model that rank 0 saves and logs."""
        if not self.distributed:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` run on rank 0 only and its result sent to every rank (the data check reads each image once);
        a :class:`MedtlError` there stops every rank with the same message instead of leaving them waiting."""
        if not self.distributed:
            return work()
        shared: list[Any] = [None, None]  # [result, failure]
        if self.is_main:
            try:
                shared[0] = work()
            except MedtlError as error:
                shared[1] = str(error)
        dist.broadcast_object_list(shared, src=0)
        if shared[1] is not None:
            raise MedtlError(shared[1])
        return shared[0]

    def close(self) -> None:
        """Leave the process group (every rank, at the end of the job)."""
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            # gloo's worker threads drop their finished work (the barrier holds the broadcasts before it, whose
            # tensors are Python objects) after the collective returns, and that needs the GIL: a process that
            # exits at once can abort in interpreter shutdown ("terminate called without an active exception",
            # about 1 exit in 15 in tests/engine/test_distributed.py). Let them finish.
            time.sleep(0.1)


def _export_scheduler_ranks() -> None:
    """In a job that ``hydra/launcher=slurm`` (submitit) started with several tasks and no torchrun: set the
    variables torchrun would (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``: the first node)
    from the scheduler's, so each task is one rank."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # each rank picks cuda:LOCAL_RANK


def interleave(parts: list[A]) -> A:
    """Undo :meth:`Runtime.shard`: ``parts[r]`` (arrays or tensors ``(n_r, ...)``, or lists) holds items ``r, r + N,
    ...`` of N parts; returns them ``(sum n_r, ...)`` in the original order."""
    total, first = sum(len(p) for p in parts), parts[0]
    if isinstance(first, np.ndarray):
        joined: Any = np.empty((total, *first.shape[1:]), dtype=first.dtype)
    elif isinstance(first, torch.Tensor):
        joined = first.new_empty((total, *first.shape[1:]))
    else:
        joined = [None] * total
    for rank, part in enumerate(parts):
        joined[rank::len(parts)] = part
    return joined


def _like(loader: DataLoader, dataset: Any, batch_size: int | None, sampler: DistributedSampler | None) -> DataLoader:
    """A loader with ``loader``'s workers, collation and memory pinning over ``dataset``."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last, persistent_workers=loader.persistent_workers,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator)
