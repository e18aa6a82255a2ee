"""Weight averaging over the training steps: torch's ``AveragedModel`` with an exponential average.

``ema_decay`` alone is torch's EMA: the first step's weights are copied and then kept with weight ``decay ** n``
after ``n`` more steps, so a short run still holds much of its first step (the 5% recipe's ~150 steps at 0.99:
0.99 ** 149 = 0.22). ``warmup=True`` normalises the average instead, as Adam corrects its moment estimates
(Kingma & Ba 2015): after ``N`` steps the average is ``sum_k decay ** (N - k) * w_k / sum_k decay ** (N - k)``, a plain mean over the
first few steps that becomes the EMA once ``N`` is well past ``1 / (1 - decay)``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["normalised_ema_multi_avg_fn", "weight_average"]

MultiAvgFn = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], torch.Tensor], None]


def normalised_ema_multi_avg_fn(decay: float) -> MultiAvgFn:
    """An ``AveragedModel`` ``multi_avg_fn``: the ``n``-th model (``n = n_averaged + 1``, 1 the copied first) enters
    with weight ``(1 - decay) / (1 - decay ** n)``, which keeps the average normalised (module docstring)."""

    @torch.no_grad()
    def update(averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged.item()) + 1
        weight = (1.0 - decay) / (1.0 - decay ** n)
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(list(averaged), list(current), weight)
        else:  # integer buffers (BatchNorm's num_batches_tracked)
            for kept, new in zip(averaged, current, strict=True):
                kept.copy_(kept * (1.0 - weight) + new * weight)

    return update


def weight_average(model: nn.Module, decay: float, warmup: bool = False) -> AveragedModel:
    """An average of ``model``'s weights and buffers (BatchNorm statistics too), updated by
    ``update_parameters(model)`` after every optimiser step: torch's EMA at ``decay``, normalised if ``warmup``."""
    average = normalised_ema_multi_avg_fn(decay) if warmup else get_ema_multi_avg_fn(decay)
    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)
