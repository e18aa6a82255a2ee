from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from medtl.engine.averaging import weight_average
from medtl.engine.loop import Trainer
from medtl.errors import MedtlError


def averaged_over(steps: list[float], decay: float, warmup: bool) -> tuple[float, float]:
    """The average's weight and BatchNorm mean after the model took each value of ``steps`` in turn."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    average = None
    for value in steps:
        with torch.no_grad():
            model[0].weight.fill_(value)
            model[1].running_mean.fill_(-value)
        if average is None:
            average = weight_average(model, decay, warmup)
        average.update_parameters(model)
    assert average is not None
    return average.module[0].weight.item(), average.module[1].running_mean.item()


def test_plain_average_keeps_the_first_step_at_decay_to_the_n() -> None:
    weight, mean = averaged_over([10.0] + [0.0] * 4, decay=0.5, warmup=False)
    assert weight == pytest.approx(10.0 * 0.5 ** 4) and mean == pytest.approx(-weight)


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.99])
def test_warmed_up_average_is_the_normalised_exponential_average(decay: float) -> None:
    steps = [float(v) for v in torch.randn(30, generator=torch.Generator().manual_seed(0))]
    weights = [decay ** (len(steps) - 1 - k) for k in range(len(steps))]
    expected = sum(w * v for w, v in zip(weights, steps)) / sum(weights)
    weight, mean = averaged_over(steps, decay, warmup=True)
    assert weight == pytest.approx(expected, rel=1e-5) and mean == pytest.approx(-expected, rel=1e-5)
    if decay == 0.99:  # far from 1 / (1 - decay) steps the normalised average is close to the plain mean
        assert weight == pytest.approx(sum(steps) / len(steps), abs=0.15 * max(abs(v) for v in steps))
        assert weight != pytest.approx(averaged_over(steps, decay, warmup=False)[0], abs=1e-3)


def test_warmed_up_average_needs_a_decay() -> None:
    with pytest.raises(MedtlError, match=r"trainer.ema_warmup=true needs trainer.ema_decay"):
        Trainer(partial(torch.optim.AdamW), ema_warmup=True)
