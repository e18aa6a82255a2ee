"""Feature-statistics alignment: multi-kernel MMD (DAN, Long et al. 2015) and Deep CORAL (Sun & Saenko 2016)."""
from __future__ import annotations

import torch

from medtl.adaptation.registry import AdaptationMethod, DomainBatch, register_adaptation

__all__ = ["multi_kernel_mmd", "coral_loss", "MaximumMeanDiscrepancy", "Coral"]


def multi_kernel_mmd(source: torch.Tensor, target: torch.Tensor,
                     bandwidth_multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Squared MMD between ``(B_s, F)`` and ``(B_t, F)`` under a sum of Gaussian kernels (biased estimate).

    Bandwidths are the mean pairwise squared distance of the pooled batch times each multiplier.
    Identical batches give exactly 0.
    """
    joint = torch.cat([source, target]).float()  # (B_s + B_t, F)
    distances = torch.cdist(joint, joint).pow(2)  # (N, N)
    base = distances.detach().sum() / max(1, joint.shape[0] ** 2 - joint.shape[0])
    base = base.clamp_min(1e-8)
    kernels = sum(torch.exp(-distances / (base * m)) for m in bandwidth_multipliers)  # (N, N)
    n = len(source)
    return kernels[:n, :n].mean() + kernels[n:, n:].mean() - 2 * kernels[:n, n:].mean()


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ``||C_s - C_t||_F^2 / (4 F^2)`` for the feature covariances ``(F, F)`` of two batches."""
    features = source.shape[1]
    source_cov = torch.cov(source.float().T)  # (F, F)
    target_cov = torch.cov(target.float().T)
    return (source_cov - target_cov).pow(2).sum() / (4 * features**2)


@register_adaptation("mmd")
class MaximumMeanDiscrepancy(AdaptationMethod):
    """DAN: penalise the multi-kernel MMD between source and target pooled features."""

    needs_target = True

    def __init__(self, weight: float = 1.0, bandwidth_multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> None:
        super().__init__(weight)
        self.bandwidth_multipliers = tuple(bandwidth_multipliers)

    def loss(self, batch: DomainBatch) -> torch.Tensor:
        return self.weight * multi_kernel_mmd(batch.source_features, batch.target_features, self.bandwidth_multipliers)


@register_adaptation("coral")
class Coral(AdaptationMethod):
    """Deep CORAL: align the second-order statistics of source and target pooled features."""

    needs_target = True

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(weight)

    def loss(self, batch: DomainBatch) -> torch.Tensor:
        return self.weight * coral_loss(batch.source_features, batch.target_features)
