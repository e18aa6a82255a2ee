"""AdaBN (Li et al. 2016): re-estimate the encoder's BatchNorm statistics on target images; nothing trains.

Only the BatchNorm layers whose statistics were estimated on the training images are re-estimated (the head
never saw any others): a linear probe's encoder and a fine-tuned model's ``frozen_stages`` kept ImageNet
statistics, and giving those layers target statistics would move the features away from what the head learnt
(``benchmarks/generalisation.py`` measured it before this rule: re-estimating every layer of a linear probe
took its held-out AUROC from 0.994 to 0.918).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medtl.adaptation.registry import AdaptationMethod, register_adaptation
from medtl.errors import MedtlError
from medtl.models.classifier import encoder_batchnorms

__all__ = ["AdaptiveBatchNorm", "recompute_batchnorm_statistics", "source_statistics_batchnorms"]

BatchNorm = nn.modules.batchnorm._BatchNorm


def source_statistics_batchnorms(model: nn.Module) -> list[str]:
    """Names of the encoder BatchNorm layers that update their statistics when ``model`` trains (its
    ``train()`` decides: a frozen encoder or frozen stages stay in eval mode); the head's are left out."""
    was_training = model.training
    model.train()
    try:
        return [name for name, module in encoder_batchnorms(model).items() if module.training]
    finally:
        model.train(was_training)


def _select(model: nn.Module, names: Sequence[str] | None) -> list[BatchNorm]:
    candidates = encoder_batchnorms(model)
    if names is None:
        return list(candidates.values())
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise MedtlError(f"BatchNorm layer '{unknown[0]}' named for AdaBN is not in the model's encoder; "
                         "the model card and the weights disagree: re-log the model with medtl.train")
    return [candidates[n] for n in names]


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, images: Iterable[dict], device: torch.device,
                                   progress: bool = True, names: Sequence[str] | None = None,
                                   seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose BatchNorm layers ``names`` (default: every encoder BatchNorm) hold the
    statistics of ``images``; weights, biases and every other buffer are copied as they are.

    ``images`` yields batches ``{"image": (B, C, H, W[, D])}`` (deterministic transforms). As in training,
    each batch is normalised by its own statistics and the running mean and variance become the average of
    the batches'. A ``DataLoader`` is read in an order shuffled by ``seed`` (full batches only, when there is
    more than one): a class-sorted folder read in order gives one-class batches, whose variances miss the
    spread between classes.
    """
    adapted = copy.deepcopy(model).to(device).eval()
    batchnorms = _select(adapted, names)
    if not batchnorms:
        return adapted
    forward = getattr(getattr(adapted, "encoder", adapted), "forward_features", adapted)
    momenta = [m.momentum for m in batchnorms]
    for module in batchnorms:
        module.reset_running_stats()
        module.momentum = None  # cumulative moving average: every batch counts the same
        module.train()
    for batch in tqdm(_shuffled(images, seed), desc="AdaBN statistics", leave=False, disable=not progress,
                      unit="batch"):
        forward(batch["image"].to(device).float())
    for module, momentum in zip(batchnorms, momenta):
        module.momentum = momentum
        module.eval()
    return adapted


def _shuffled(images: Iterable[dict], seed: int) -> Iterable[dict]:
    if not isinstance(images, DataLoader) or images.batch_size is None:
        return images
    return DataLoader(images.dataset, batch_size=images.batch_size, shuffle=True, num_workers=images.num_workers,
                      collate_fn=images.collate_fn, drop_last=len(images.dataset) > images.batch_size,
                      generator=torch.Generator().manual_seed(seed))


@register_adaptation("adabn")
class AdaptiveBatchNorm(AdaptationMethod):
    """Train on the source as usual; before the target is evaluated, swap in target BatchNorm statistics
    (of the layers that learnt source statistics).

    The source keeps its own statistics (source metrics come from the unadapted model).
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(weight)

    def adapt(self, model: nn.Module, target_images: Iterable[dict], device: torch.device) -> nn.Module:
        return recompute_batchnorm_statistics(model, target_images, device,
                                              names=source_statistics_batchnorms(model))
