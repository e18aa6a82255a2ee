"""What a training run needs to continue after a kill: the training state and the run's own folder.

:class:`TrainingState` gathers the model, optimiser, scheduler, adaptation method, random generators
(Python, NumPy, torch, CUDA and the MONAI random transforms of the training pipeline), the epoch and
the early-stopping record, as tensors and plain values only, so it is read back with
``torch.load(..., weights_only=True)``. :class:`RunFolder` is one folder per MLflow run
(``<trainer.checkpoint_dir>/<run id>/``): ``last.pt`` (written atomically after every epoch),
``best.pt``, the run's ``config.yaml`` and ``run.json``; two runs never share one.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable

from medtl.errors import MedtlError

__all__ = ["TrainingState", "RunFolder", "random_transforms", "find_run_folder", "prune_finished_runs"]

log = logging.getLogger(__name__)
STATE_VERSION = 1


def random_transforms(transform: Any) -> list[Randomizable]:
    """The MONAI random transforms inside ``transform`` (a ``Compose``, one transform, an object with a
    ``transforms`` list such as :class:`~medtl.data.site_batches.SiteBatches`, or a list of those), in a stable
    order, including those that others hold (``RandAffined.rand_affine.rand_affine_grid``): each has its own
    generator."""
    found: list[Randomizable] = []
    seen: set[int] = set()

    def visit(item: Any, depth: int) -> None:
        if id(item) in seen or depth > 4:
            return
        seen.add(id(item))
        if isinstance(item, Randomizable):
            found.append(item)
        for child in getattr(item, "transforms", []) or []:
            visit(child, depth + 1)
        for _, value in sorted(getattr(item, "__dict__", {}).items()):
            if isinstance(value, Randomizable):
                visit(value, depth + 1)

    for item in transform if isinstance(transform, list) else [transform]:
        if item is not None:
            visit(item, 0)
    return found


def _numpy_state(generator: np.random.RandomState) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = generator.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def _set_numpy_state(generator: Any, state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    generator.set_state(("MT19937", keys, state["pos"], state["has_gauss"], state["cached"]))


@dataclass
class TrainingState:
    """Everything an epoch boundary holds; ``state_dict()`` is tensors and plain values only.

    ``epoch`` counts completed epochs: training resumes at epoch index ``epoch``.
    """

    epoch: int = 0
    best_epoch: int = -1
    best_score: float = float("-inf")
    best_loss: float = float("inf")  # the best epoch's validation loss: breaks ties of the monitored score
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    adaptation: dict[str, torch.Tensor] = field(default_factory=dict)
    objective: dict[str, torch.Tensor] = field(default_factory=dict)  # the objective's state (group DRO's weights)
    averaged: dict[str, torch.Tensor] = field(default_factory=dict)  # trainer.ema_decay: the weights' average
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)  # trainer.interpolate_probe: the probe's weights
    rng: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    def record(self, epoch: int, metrics: dict[str, float], score: float, model: torch.nn.Module,
               patience: int, loss: float = float("inf")) -> bool:
        """Add epoch ``epoch``'s metrics; keep a copy of the weights when ``score`` is the best so far (an equal
        ``score`` with a lower validation ``loss`` counts as better), and decide early stopping (``done``).
        Returns whether this epoch is the new best.

        The tie-break matters on small validation sets: AUROC reaches 1.0 on a few volumes within an epoch or two,
        and the first epoch to reach it would otherwise be kept, a barely trained model whose scores sit near 0.5
        (a threshold that does not transfer)."""
        self.history.append(metrics)
        self.epoch = epoch + 1
        loss = float(loss) if np.isfinite(loss) else float("inf")
        improved = (score > self.best_score or self.best_epoch < 0
                    or (score == self.best_score and loss < self.best_loss))
        if improved:
            self.best_epoch, self.best_score, self.best_loss = epoch, float(score), loss
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.done = not improved and epoch - self.best_epoch >= patience
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **{name: getattr(self, name) for name in self.__dataclass_fields__}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainingState:
        if state.get("version") != STATE_VERSION:
            raise MedtlError(f"training state version {state.get('version')} is not {STATE_VERSION}; "
                             "it was written by another medtl: start a new run instead of resuming")
        # Fields added later (best_loss, averaged) keep their defaults when an older state is resumed.
        return cls(**{name: state[name] for name in cls.__dataclass_fields__ if name in state})

    @staticmethod
    def capture_rng(transforms: list[Randomizable]) -> dict[str, Any]:
        """The state of every generator that decides what the next epoch sees."""
        return {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
                "numpy": _numpy_state(np.random.mtrand._rand), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "transforms": [_numpy_state(t.R) for t in transforms],
                # what a transform remembers between images (medtl.data.counterfactual's reservoirs), {} for none
                "transform_states": [t.state_dict() if hasattr(t, "state_dict") else {} for t in transforms]}

    @staticmethod
    def restore_rng(rng: dict[str, Any], transforms: list[Randomizable]) -> None:
        random.setstate((3, tuple(rng["python"]), rng["python_pos"]))
        _set_numpy_state(np.random.mtrand._rand, rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if len(rng["transforms"]) != len(transforms):
            raise MedtlError(f"the training pipeline has {len(transforms)} random transforms, the saved state "
                             f"{len(rng['transforms'])}; resume with the configuration the run started with")
        for transform, state in zip(transforms, rng["transforms"]):
            _set_numpy_state(transform.R, state)
        for transform, remembered in zip(transforms, rng.get("transform_states", [])):
            if remembered and hasattr(transform, "load_state_dict"):
                transform.load_state_dict(remembered)


@dataclass
class RunFolder:
    """``<checkpoint_dir>/<run id>/``: the checkpoints and what is needed to find and resume the run."""

    path: Path
    LAST = "last.pt"
    BEST = "best.pt"
    CONFIG = "config.yaml"
    INFO = "run.json"
    FINISHED = "FINISHED"

    @classmethod
    def create(cls, checkpoint_dir: str | Path, run_id: str, tracking_uri: str, config_yaml: str) -> RunFolder:
        folder = cls(Path(checkpoint_dir).expanduser().resolve() / run_id)
        folder.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder.path / cls.CONFIG, config_yaml.encode())
        info = {"run_id": run_id, "tracking_uri": tracking_uri, "host": socket.gethostname(), "pid": os.getpid()}
        _write_atomic(folder.path / cls.INFO, json.dumps(info, indent=2).encode())
        (folder.path / cls.FINISHED).unlink(missing_ok=True)
        return folder

    def info(self) -> dict[str, Any]:
        return json.loads((self.path / self.INFO).read_text())

    def save(self, name: str, state: dict[str, Any]) -> None:
        """``torch.save`` to a temporary file beside ``name``, then rename: a kill leaves the old file or the new."""
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path / name)

    def load_last(self) -> TrainingState | None:
        path = self.path / self.LAST
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file is named, not unpickled
            raise MedtlError(f"cannot read the training state {path} ({type(exc).__name__}); delete it to restart "
                             "the run from its first epoch") from exc
        return TrainingState.from_state_dict(state)

    def finish(self) -> None:
        """The run ended well: nothing is left to resume, so ``last.pt`` goes; ``best.pt`` stays."""
        (self.path / self.LAST).unlink(missing_ok=True)
        (self.path / self.FINISHED).touch()


def find_run_folder(resume: str, checkpoint_dir: str | Path) -> RunFolder:
    """The folder of ``resume``: a run folder path, or an MLflow run id under ``checkpoint_dir``."""
    candidates = [Path(resume).expanduser(), Path(checkpoint_dir).expanduser() / resume]
    for path in candidates:
        if (path / RunFolder.INFO).is_file():
            return RunFolder(path.resolve())
    raise MedtlError(f"trainer.resume={resume}: no run folder with {RunFolder.INFO} at {candidates[0]} or "
                     f"{candidates[1]}; pass the run folder (printed at the start of the run) or its MLflow run id "
                     "with the same trainer.checkpoint_dir")


def prune_finished_runs(checkpoint_dir: str | Path, keep: int) -> list[Path]:
    """Delete the folders of finished runs beyond the ``keep`` most recent; unfinished (resumable) ones stay."""
    root = Path(checkpoint_dir).expanduser()
    if keep < 0 or not root.is_dir():
        return []
    finished = sorted((p for p in root.iterdir() if (p / RunFolder.FINISHED).is_file()),
                      key=lambda p: (p / RunFolder.FINISHED).stat().st_mtime, reverse=True)
    removed = finished[keep:]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        log.info("removed the checkpoints of %d older finished run(s) (trainer.keep_checkpoints=%d)", len(removed), keep)
    return removed


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
