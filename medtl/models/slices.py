"""2.5D: a 2D ImageNet encoder applied to the slices of a volume, its slice features pooled into one.

Layout: ``(B, 1, X, Y, Z)`` -> ``count`` slices along ``axis`` (evenly spaced over the volume) ->
``(B * count, c, H, W)`` with ``c = 1`` (one slice) or ``c = 3`` (``slab``: the slice and its two neighbours as
the RGB channels, the ImageNet stem seeing a thin slab) -> 2D features ``(B * count, F)`` -> ``(B, count, F)`` ->
pooled ``(B, F)``: the mean over slices, or gated attention (Ilse et al. 2018), whose weights show which slices
the decision rests on. The pooling is part of the encoder: ``pooling=attention`` needs a trainable encoder
(``finetune`` or ``scratch``); a linear probe pools by the mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.models.registry import Encoder

__all__ = ["SliceConfig", "SliceEncoder", "GatedAttentionPool"]


@dataclass(frozen=True)
class SliceConfig:
    """``model.slices``: which slices the 2D encoder sees and how their features are pooled."""

    axis: int = 2          # spatial axis across which slices are cut: 0 sagittal, 1 coronal, 2 axial (RAS)
    count: int = 16        # slices sampled evenly over the volume
    pooling: str = "mean"  # mean | attention
    slab: bool = False     # three neighbouring slices as the RGB channels

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise MedtlError(f"model.slices.axis={self.axis} must be 0 (sagittal), 1 (coronal) or 2 (axial)")
        if self.count < 1:
            raise MedtlError(f"model.slices.count={self.count} must be at least 1")
        if self.pooling not in ("mean", "attention"):
            raise MedtlError(f"model.slices.pooling='{self.pooling}' is unknown; use mean or attention")


class GatedAttentionPool(nn.Module):
    """``(B, N, F)`` -> ``(B, F)``: softmax over ``N`` of ``w . (tanh(V h) * sigmoid(U h))``."""

    def __init__(self, num_features: int, hidden: int = 128) -> None:
        super().__init__()
        self.value, self.gate = nn.Linear(num_features, hidden), nn.Linear(num_features, hidden)
        self.score = nn.Linear(hidden, 1)
        self.last_weights: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.value(features)) * torch.sigmoid(self.gate(features)))  # (B, N, 1)
        weights = torch.softmax(scores, dim=1)
        self.last_weights = weights.detach()[..., 0]  # (B, N)
        return (weights * features).sum(dim=1)  # (B, F)


class SliceEncoder(Encoder):
    """A 2D :class:`Encoder` made into a volume encoder (see the module docstring)."""

    spatial_dims = 3

    def __init__(self, slice_encoder: Encoder, config: SliceConfig) -> None:
        super().__init__()
        if getattr(slice_encoder, "spatial_dims", 2) != 2:
            raise MedtlError("model.slices needs a 2D encoder; a 3D encoder takes the volume as it is")
        self.slice_encoder, self.config = slice_encoder, config
        self.num_features = slice_encoder.num_features
        self.weights_info = slice_encoder.weights_info
        self.pool = GatedAttentionPool(self.num_features) if config.pooling == "attention" else None
        self.head = slice_encoder.head
        slice_encoder.head = nn.Identity()

    def slices(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` -> ``(B, count, c, H, W)`` (the two axes other than ``axis``, in RAS order)."""
        if volume.ndim != 5:
            raise MedtlError(f"a 2.5D encoder takes volumes (B, C, X, Y, Z); got a tensor of shape {tuple(volume.shape)}")
        moved = volume[:, 0].movedim(1 + self.config.axis, 1)  # (B, n, H, W)
        n = moved.shape[1]
        index = self.slice_index(n, volume.device)  # (count,)
        if not self.config.slab:
            return moved[:, index].unsqueeze(2)  # (B, count, 1, H, W)
        around = torch.stack([(index - 1).clamp(0, n - 1), index, (index + 1).clamp(0, n - 1)], dim=1)  # (count, 3)
        return moved[:, around]  # (B, count, 3, H, W)

    def slice_index(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(count,)`` positions along ``axis`` (of ``n``) of the slices the encoder sees, evenly spaced."""
        return torch.linspace(0, n - 1, self.config.count, device=device).round().long()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        stack = self.slices(x)
        batch, count = stack.shape[:2]
        features = self.slice_encoder.forward_features(stack.flatten(0, 1))  # (B * count, F)
        features = features.view(batch, count, -1)  # (B, count, F)
        return self.pool(features) if self.pool is not None else features.mean(dim=1)  # (B, F)

    def stage_modules(self) -> list[list[nn.Module]]:
        stages = [list(stage) for stage in self.slice_encoder.stage_modules()]
        if self.pool is not None:
            stages[-1].append(self.pool)
        return stages

    def gradcam_layer(self) -> str:
        return f"slice_encoder.{self.slice_encoder.gradcam_layer()}"
