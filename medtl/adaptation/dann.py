"""DANN: a domain discriminator trained through gradient reversal (Ganin et al., JMLR 2016)."""
from __future__ import annotations

import torch
from torch import nn

from medtl.adaptation.gradient_reversal import GradientReversal
from medtl.adaptation.registry import AdaptationMethod, DomainBatch, register_adaptation

__all__ = ["DomainAdversarial", "domain_discriminator"]


def domain_discriminator(num_features: int, hidden: int = 1024) -> nn.Sequential:
    """``(B, F)`` features -> ``(B, 1)`` logit of "source" (Linear-BN-ReLU x2 -> Linear, as in TLlib)."""
    return nn.Sequential(nn.Linear(num_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 1))


@register_adaptation("dann")
class DomainAdversarial(AdaptationMethod):
    """The discriminator learns source vs target; the reversed gradient teaches the encoder to confuse it.

    Args:
        num_features: the encoder's pooled feature size ``F``.
        hidden: discriminator width.
        alpha, max_coefficient: reversal coefficient ``max * (2 / (1 + exp(-alpha * progress)) - 1)``.
    """

    needs_target = True

    def __init__(self, num_features: int, weight: float = 1.0, hidden: int = 1024, alpha: float = 10.0,
                 max_coefficient: float = 1.0) -> None:
        super().__init__(weight)
        self.reversal = GradientReversal(alpha, max_coefficient)
        self.discriminator = domain_discriminator(num_features, hidden)
        self._correct, self._seen = 0, 0

    def loss(self, batch: DomainBatch) -> torch.Tensor:
        features = torch.cat([batch.source_features, batch.target_features])  # (B_s + B_t, F)
        is_source = torch.cat([torch.ones(len(batch.source_features)), torch.zeros(len(batch.target_features))])
        is_source = is_source.to(features.device)
        logits = self.discriminator(self.reversal(features, batch.progress)).squeeze(1).float()  # (B_s + B_t,)
        self._correct += int(((logits > 0).float() == is_source).sum())
        self._seen += len(is_source)
        return self.weight * nn.functional.binary_cross_entropy_with_logits(logits, is_source)

    def epoch_metrics(self) -> dict[str, float]:
        """Training-time domain-discriminator accuracy over the epoch (0.5 = domains indistinguishable)."""
        if not self._seen:
            return {}
        accuracy = self._correct / self._seen
        self._correct, self._seen = 0, 0
        return {"domain_discriminator_accuracy": accuracy}
