"""Entropy minimisation on unlabelled target predictions (Grandvalet & Bengio 2005), alone or on top of another method."""
from __future__ import annotations

import torch

from medtl.adaptation.registry import AdaptationMethod, DomainBatch, register_adaptation

__all__ = ["prediction_entropy", "EntropyMinimisation", "Combined"]


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the softmax of ``(B, K)`` logits."""
    log_probs = torch.log_softmax(logits.float(), dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1).mean()


@register_adaptation("entropy")
class EntropyMinimisation(AdaptationMethod):
    """Push target predictions away from the decision boundary."""

    needs_target = True

    def __init__(self, weight: float = 0.1) -> None:
        super().__init__(weight)

    def loss(self, batch: DomainBatch) -> torch.Tensor:
        return self.weight * prediction_entropy(batch.target_logits)


class Combined(AdaptationMethod):
    """A method plus entropy minimisation (``adaptation.entropy_weight > 0``): losses add, hooks chain."""

    def __init__(self, method: AdaptationMethod, entropy: EntropyMinimisation) -> None:
        super().__init__(1.0)
        self.method, self.entropy = method, entropy
        self.needs_target = True
        self.trains_on_target_labels = method.trains_on_target_labels
        self.method_name = f"{getattr(method, 'method_name', type(method).__name__)}+entropy"

    def loss(self, batch: DomainBatch) -> torch.Tensor:
        return self.method.loss(batch) + self.entropy.loss(batch)

    def epoch_metrics(self) -> dict[str, float]:
        return self.method.epoch_metrics()

    def adapt(self, model: torch.nn.Module, target_images, device: torch.device) -> torch.nn.Module:  # noqa: ANN001
        return self.method.adapt(model, target_images, device)
