"""Learning-rate schedules as pure functions of the step."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine_factor", "warmup_cosine_scheduler"]


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.01) -> float:
    """Multiplier of the base learning rate at ``step``.

    Rises linearly from ``1 / (warmup_steps + 1)`` to 1 over ``warmup_steps``, then follows a half
    cosine from 1 down to ``min_factor`` at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                            min_factor: float = 0.01) -> LambdaLR:
    """A per-step ``LambdaLR`` applying :func:`warmup_cosine_factor` to every parameter group."""
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, min_factor))
