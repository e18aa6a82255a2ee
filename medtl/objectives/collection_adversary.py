"""Adversarial removal of collection identity: DANN's gradient reversal with the image's collection as the target."""
from __future__ import annotations

import torch
from torch import nn

from medtl.adaptation.gradient_reversal import GradientReversal
from medtl.errors import MedtlError
from medtl.objectives.registry import SourceBatch, SourceObjective, register_objective

__all__ = ["CollectionAdversary"]


@register_objective("collection_adversary")
class CollectionAdversary(SourceObjective):
    """Cross-entropy plus ``weight`` x an adversary's cross-entropy at telling the collection from the features,
    its gradient reversed into the encoder (Ganin et al., JMLR 2016).

    The adversary also sees the class (one-hot, concatenated): when the label follows the collection, the
    collection is partly the label, and an adversary blind to the class would remove the label's own information.
    Conditioned on the class, it removes only what the collection adds (as conditional adversarial removal of a
    nuisance does).

    Args:
        weight: the adversary's share of the loss.
        hidden: the adversary's width (Linear-ReLU-Linear).
        alpha, max_coefficient: the reversal coefficient's warm-up, as DANN's.
    """

    uses_collections = True
    needs_features = True

    def __init__(self, num_features: int, weight: float = 1.0, hidden: int = 256, alpha: float = 10.0,
                 max_coefficient: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise MedtlError(f"objective.weight={weight} must be >= 0")
        self.weight, self.num_features, self.hidden = float(weight), int(num_features), int(hidden)
        self.reversal = GradientReversal(alpha, max_coefficient)
        self.adversary: nn.Module = nn.Identity()
        self._correct, self._seen = 0, 0

    def on_bind(self) -> None:
        collections = max(1, len(self.collection_names))
        self.adversary = nn.Sequential(nn.Linear(self.num_features + self.num_classes, self.hidden), nn.ReLU(),
                                       nn.Linear(self.hidden, collections))

    def loss(self, batch: SourceBatch) -> torch.Tensor:
        task = nn.functional.cross_entropy(batch.logits, batch.labels)
        known = batch.collections >= 0
        if len(self.collection_names) < 2 or not bool(known.any()):
            return task
        classes = nn.functional.one_hot(batch.labels[known], self.num_classes).to(batch.features.dtype)  # (B', K)
        features = self.reversal(batch.features[known], batch.progress)  # (B', F)
        logits = self.adversary(torch.cat([features, classes], dim=1)).float()  # (B', C)
        self._correct += int((logits.argmax(1) == batch.collections[known]).sum())
        self._seen += int(known.sum())
        return task + self.weight * nn.functional.cross_entropy(logits, batch.collections[known])

    def epoch_metrics(self) -> dict[str, float]:
        """The adversary's training accuracy at telling the collection (chance: the largest collection's share)."""
        if not self._seen:
            return {}
        accuracy, self._correct, self._seen = self._correct / self._seen, 0, 0
        return {"collection_adversary_accuracy": accuracy}

    def describe(self) -> str:
        return (f"adversarial removal of collection identity over {len(self.collection_names)} collection(s), "
                f"weight {self.weight}: the encoder is trained to hide which collection an image came from")
