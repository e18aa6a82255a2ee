from __future__ import annotations

import pytest
import torch

from medtl.adaptation import create_adaptation, list_adaptations
from medtl.errors import MedtlError


@pytest.mark.parametrize("name", list_adaptations())
def test_every_method_gives_a_finite_scalar_loss_with_gradients(name: str) -> None:
    method = create_adaptation(name)
    source = torch.randn(8, 16, requires_grad=True)
    target = torch.randn(8, 16, requires_grad=True) if method.needs_target else None
    loss = method.loss(source, target, progress=0.5)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_none_adds_nothing() -> None:
    assert create_adaptation("none").loss(torch.randn(4, 3), None, 0.0).item() == 0.0


def test_unknown_method_is_a_user_error() -> None:
    with pytest.raises(MedtlError, match="adaptation='dann'"):
        create_adaptation("dann")
