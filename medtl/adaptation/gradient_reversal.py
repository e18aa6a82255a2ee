"""Gradient reversal (Ganin & Lempitsky 2015; Ganin et al., JMLR 2016) with its warm-up schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["reverse_gradient", "GradientReversal", "warm_start_coefficient"]


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad_output, None


def reverse_gradient(x: torch.Tensor, coefficient: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-coefficient`` in the backward pass."""
    return _ReverseGradient.apply(x, coefficient)


def warm_start_coefficient(progress: float, alpha: float = 10.0, maximum: float = 1.0) -> float:
    """DANN's schedule ``maximum * (2 / (1 + exp(-alpha * progress)) - 1)``: 0 at the start, -> ``maximum``.

    ``progress`` is the fraction of training done, in [0, 1].
    """
    return maximum * (2.0 / (1.0 + math.exp(-alpha * progress)) - 1.0)


class GradientReversal(nn.Module):
    """A layer that reverses gradients with the warm-start coefficient at ``progress``."""

    def __init__(self, alpha: float = 10.0, maximum: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.maximum = alpha, maximum

    def forward(self, x: torch.Tensor, progress: float) -> torch.Tensor:
        return reverse_gradient(x, warm_start_coefficient(progress, self.alpha, self.maximum))
