"""Registry of domain-adaptation methods; every method has the same small interface.

A method sees one training step as a :class:`DomainBatch` (pooled features and logits of a source
batch and of an unlabelled target batch) and returns an extra loss; it may own trainable modules
(``param_groups``), report metrics, and adapt the trained model before the target is evaluated
(``adapt``, e.g. AdaBN).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.registries import registrar

__all__ = ["DomainBatch", "AdaptationMethod", "NoAdaptation", "register_adaptation", "create_adaptation",
           "list_adaptations"]


@dataclass
class DomainBatch:
    """One training step seen by an adaptation method.

    ``source_features`` ``(B_s, F)`` and ``target_features`` ``(B_t, F)``: pooled encoder features;
    ``source_logits`` ``(B_s, K)`` and ``target_logits`` ``(B_t, K)``; ``progress`` runs from 0 to 1
    over training (for warm-up schedules). Target tensors are ``None`` for methods without target data.
    """

    source_features: torch.Tensor
    source_logits: torch.Tensor
    target_features: torch.Tensor | None = None
    target_logits: torch.Tensor | None = None
    progress: float = 0.0


class AdaptationMethod(nn.Module):
    """Base class: an extra loss term on a :class:`DomainBatch`, scaled by ``weight``.

    Class attributes: ``needs_target`` (the loop must draw unlabelled target batches),
    ``trains_on_target_labels`` (the reference oracle: supervised on labelled target images).
    """

    needs_target: bool = False
    trains_on_target_labels: bool = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise MedtlError(f"adaptation.weight={weight} must be >= 0")
        self.weight = float(weight)

    def loss(self, batch: DomainBatch) -> torch.Tensor:
        """The weighted adaptation loss to add to the task loss (a scalar tensor)."""
        return batch.source_features.new_zeros(())

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups for the method's own trainable modules (none by default)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "name": "adaptation"}] if params else []

    def epoch_metrics(self) -> dict[str, float]:
        """Metrics gathered during the last epoch (e.g. domain-discriminator accuracy); reset on read."""
        return {}

    def adapt(self, model: nn.Module, target_images: Iterable[dict], device: torch.device) -> nn.Module:
        """The model to use on the target domain after training; the trained model itself by default."""
        return model


_METHODS: dict[str, Callable[..., AdaptationMethod]] = {}


def register_adaptation(name: str) -> Callable[[type[AdaptationMethod]], type[AdaptationMethod]]:
    """Register an :class:`AdaptationMethod` subclass under ``name``."""
    return registrar(_METHODS, "adaptation method", name, "method_name")


def create_adaptation(name: str, **kwargs: object) -> AdaptationMethod:
    """Instantiate the adaptation method registered as ``name``."""
    if name not in _METHODS:
        raise MedtlError(f"adaptation.method='{name}' is not a registered method; choose one of {list_adaptations()}")
    return _METHODS[name](**kwargs)


def list_adaptations() -> list[str]:
    return sorted(_METHODS)


@register_adaptation("none")
class NoAdaptation(AdaptationMethod):
    """Source-only training: no extra loss, no target data (the baseline)."""


@register_adaptation("target_oracle")
class TargetOracle(AdaptationMethod):
    """The reference ceiling: supervised on labelled target images (target patients kept apart from its
    evaluation); the source is only validated on."""

    trains_on_target_labels = True
