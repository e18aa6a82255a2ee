"""Registry of domain-adaptation methods; every method has the same small interface."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medtl.errors import MedtlError

__all__ = ["AdaptationMethod", "NoAdaptation", "register_adaptation", "create_adaptation", "list_adaptations"]


class AdaptationMethod(nn.Module):
    """Extra loss on pooled features of source ``(B_s, F)`` and target ``(B_t, F)`` images.

    ``needs_target`` says whether the training loop must draw unlabelled target batches.
    """

    needs_target: bool = False

    def loss(self, source_features: torch.Tensor, target_features: torch.Tensor | None,
             progress: float) -> torch.Tensor:
        """Adaptation loss to add to the task loss; ``progress`` runs from 0 to 1 over training."""
        raise NotImplementedError


_METHODS: dict[str, Callable[..., AdaptationMethod]] = {}


def register_adaptation(name: str) -> Callable[[type[AdaptationMethod]], type[AdaptationMethod]]:
    """Register an :class:`AdaptationMethod` subclass under ``name``."""

    def decorator(cls: type[AdaptationMethod]) -> type[AdaptationMethod]:
        if name in _METHODS:
            raise ValueError(f"adaptation method '{name}' is registered twice")
        _METHODS[name] = cls
        return cls

    return decorator


def create_adaptation(name: str, **kwargs: object) -> AdaptationMethod:
    """Instantiate the adaptation method registered as ``name``."""
    if name not in _METHODS:
        raise MedtlError(f"adaptation='{name}' is not a registered method; choose one of {list_adaptations()}")
    return _METHODS[name](**kwargs)


def list_adaptations() -> list[str]:
    return sorted(_METHODS)


@register_adaptation("none")
class NoAdaptation(AdaptationMethod):
    """Source-only training: no extra loss, no target data."""

    def loss(self, source_features: torch.Tensor, target_features: torch.Tensor | None,
             progress: float) -> torch.Tensor:
        return source_features.new_zeros(())
