"""Group DRO (Sagawa et al., ICLR 2020): train for the worst group, the groups being collection x class."""
from __future__ import annotations

import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.objectives.registry import SourceBatch, SourceObjective, register_objective

__all__ = ["GroupDRO"]


@register_objective("group_dro")
class GroupDRO(SourceObjective):
    """Online group DRO: a weight ``q_g`` per group ``g = collection * K + class``, raised each step as
    ``q_g <- q_g * exp(step_size * loss_g)`` and renormalised; the loss is ``sum_g q_g * loss_g`` over the groups
    of the batch. Groups where the shortcut does not hold (tumours of the mostly-normal collection) are few and
    hard; ERM may ignore them, group DRO may not.

    Under ``trainer=ddp`` the weights are updated from the group losses of the whole step, every rank's shard
    (their sums and counts are all-reduced), so every rank holds the same weights, the ones one process would.

    Args:
        step_size: ``eta`` of the exponentiated-gradient step on the group weights (Sagawa et al.: 0.01).
    """

    uses_collections = True

    def __init__(self, step_size: float = 0.01) -> None:
        super().__init__()
        if step_size <= 0:
            raise MedtlError(f"objective.options.step_size={step_size} must be > 0 (Sagawa et al. use 0.01)")
        self.step_size = float(step_size)
        self.register_buffer("group_weights", torch.ones(0))
        self._worst: list[float] = []

    def on_bind(self) -> None:
        groups = max(1, len(self.collection_names)) * self.num_classes
        self.group_weights = torch.full((groups,), 1.0 / groups)

    def loss(self, batch: SourceBatch) -> torch.Tensor:
        groups = batch.collections.clamp(min=0) * self.num_classes + batch.labels  # (B,)
        per_image = nn.functional.cross_entropy(batch.logits, batch.labels, reduction="none")  # (B,)
        count = torch.zeros_like(self.group_weights).index_add_(0, groups, torch.ones_like(per_image))  # (G,)
        total = torch.zeros_like(self.group_weights).index_add_(0, groups, per_image)  # (G,)
        group_loss = total / count.clamp(min=1)  # (G,), 0 for groups absent from the batch
        with torch.no_grad():
            step_loss = _over_all_ranks(total.detach(), count)  # (G,), this step's batch on every rank
            weights = self.group_weights.to(group_loss.device) * torch.exp(self.step_size * step_loss)
            self.group_weights = weights / weights.sum()
        self._worst.append(float(step_loss.max()))
        return (self.group_weights * group_loss).sum()

    def epoch_metrics(self) -> dict[str, float]:
        """The worst group's mean training loss over the epoch and the largest group weight now."""
        if not self._worst:
            return {}
        metrics = {"worst_group_loss": sum(self._worst) / len(self._worst),
                   "max_group_weight": float(self.group_weights.max())}
        self._worst = []
        return metrics

    def describe(self) -> str:
        return (f"group DRO over {len(self.collection_names)} collection(s) x {self.num_classes} classes "
                f"(step size {self.step_size}): the worst collection-class group is weighted up")


def _over_all_ranks(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per-group mean loss ``(G,)`` of the step's images on every rank (``total`` and ``count`` ``(G,)`` summed
    across a distributed job; this rank's alone otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        both = torch.stack([total, count])  # (2, G)
        torch.distributed.all_reduce(both)
        total, count = both[0], both[1]
    return total / count.clamp(min=1)
