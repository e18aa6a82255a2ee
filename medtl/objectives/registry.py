"""Registry of training objectives on the labelled source batch; every objective has the same small interface.

An objective turns one training step's :class:`SourceBatch` (pooled features, logits, labels and each image's
collection) into the task loss. ``erm`` is plain cross-entropy; the others act on a shortcut that the data check
found (:mod:`medtl.data.shortcuts`): they need to know which collection each training image came from, which
:meth:`SourceObjective.bind` gives them before training. An objective may own trainable modules
(``param_groups``), keep state across steps (its ``state_dict``, saved for resume) and report epoch metrics.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.registries import registrar

__all__ = ["SourceBatch", "SourceObjective", "CrossEntropy", "register_objective", "create_objective",
           "list_objectives"]


@dataclass
class SourceBatch:
    """One training step's labelled source batch.

    ``features`` ``(B, F)`` pooled encoder features; ``logits`` ``(B, K)`` (float32); ``labels`` ``(B,)`` class
    indices; ``collections`` ``(B,)`` each image's collection index (:attr:`SourceObjective.collection_names`),
    -1 where unknown; ``progress`` runs from 0 to 1 over training.
    """

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    collections: torch.Tensor
    progress: float = 0.0


class SourceObjective(nn.Module):
    """Base class: cross-entropy, with what every objective shares (binding collections, metrics, parameters).

    Class attributes: ``uses_collections`` (training stops with one line when images have no collection),
    ``needs_features`` (the loop must return pooled features besides logits).
    """

    uses_collections: bool = False
    needs_features: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.collection_names: list[str] = []
        self.num_classes = 0
        self._collection_of: dict[str, int] = {}

    def bind(self, collection_of: Mapping[str, str], num_classes: int) -> None:
        """Learn each training image's collection (``path -> name``) and the number of classes before training."""
        self.collection_names = sorted(set(collection_of.values()))
        self._collection_of = {path: self.collection_names.index(name) for path, name in collection_of.items()}
        self.num_classes = int(num_classes)
        self.on_bind()

    def on_bind(self) -> None:
        """Build what depends on the collections and classes (group weights, an adversary's output layer)."""

    def collections(self, paths: Sequence[str], device: torch.device) -> torch.Tensor:
        """``(B,)`` collection index of each path of a batch, -1 where unknown."""
        return torch.tensor([self._collection_of.get(p, -1) for p in paths], dtype=torch.long, device=device)

    def loss(self, batch: SourceBatch) -> torch.Tensor:
        """The task loss (a scalar tensor): cross-entropy by default."""
        return nn.functional.cross_entropy(batch.logits, batch.labels)

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups for the objective's own trainable modules (none by default)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "name": "objective"}] if params else []

    def epoch_metrics(self) -> dict[str, float]:
        """Metrics gathered during the last epoch; reset on read."""
        return {}

    def describe(self) -> str:
        """One line for the training log: what this objective does about a shortcut."""
        return "plain cross-entropy: nothing is done about a shortcut"


_OBJECTIVES: dict[str, Callable[..., SourceObjective]] = {}


def register_objective(name: str) -> Callable[[type[SourceObjective]], type[SourceObjective]]:
    """Register a :class:`SourceObjective` subclass under ``name`` (``objective=<name>``)."""
    return registrar(_OBJECTIVES, "objective", name, "objective_name")


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def create_objective(name: str, **options: object) -> SourceObjective:
    """The registered objective ``name`` with its ``options``; one line listing the names for an unknown one."""
    if name not in _OBJECTIVES:
        raise MedtlError(f"objective '{name}' is not registered; choose one of {list_objectives()}")
    return _OBJECTIVES[name](**options)


@register_objective("erm")
class CrossEntropy(SourceObjective):
    """Empirical risk minimisation: the mean cross-entropy of the batch."""
