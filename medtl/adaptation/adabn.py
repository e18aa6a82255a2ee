"""AdaBN (Li et al. 2016): re-estimate the encoder's BatchNorm statistics on target images; nothing trains."""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from medtl.adaptation.registry import AdaptationMethod, register_adaptation

__all__ = ["AdaptiveBatchNorm", "recompute_batchnorm_statistics"]


def _encoder_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    encoder = getattr(model, "encoder", model)
    head = getattr(encoder, "head", None)
    head_ids = {id(m) for m in head.modules()} if head is not None else set()
    return [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_ids]


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, images: Iterable[dict], device: torch.device,
                                   progress: bool = True) -> nn.Module:
    """A copy of ``model`` whose encoder BatchNorm running mean/var are the exact averages over ``images``.

    ``images`` yields batches ``{"image": (B, C, H, W)}`` (deterministic transforms). Only the running
    statistics change: weights, biases and every other buffer are copied as they are.
    """
    adapted = copy.deepcopy(model).to(device).eval()
    batchnorms = _encoder_batchnorms(adapted)
    if not batchnorms:
        return adapted
    momenta = [m.momentum for m in batchnorms]
    for module in batchnorms:
        module.reset_running_stats()
        module.momentum = None  # cumulative moving average: every batch counts the same
        module.train()
    forward = getattr(getattr(adapted, "encoder", adapted), "forward_features", adapted)
    for batch in tqdm(images, desc="AdaBN statistics", leave=False, disable=not progress, unit="batch"):
        forward(batch["image"].to(device).float())
    for module, momentum in zip(batchnorms, momenta):
        module.momentum = momentum
        module.eval()
    return adapted


@register_adaptation("adabn")
class AdaptiveBatchNorm(AdaptationMethod):
    """Train on the source as usual; before the target is evaluated, swap in target BatchNorm statistics.

    The source keeps its own statistics (source metrics come from the unadapted model).
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(weight)

    def adapt(self, model: nn.Module, target_images: Iterable[dict], device: torch.device) -> nn.Module:
        return recompute_batchnorm_statistics(model, target_images, device)
