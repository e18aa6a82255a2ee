from __future__ import annotations

import numpy as np
import pytest
import torch

from medtl.adaptation import DomainBatch, build_adaptation, create_adaptation, list_adaptations
from medtl.adaptation.entropy import Combined
from medtl.errors import MedtlError

FEATURES = 16


def _batch(progress: float = 0.5) -> DomainBatch:
    generator = torch.Generator().manual_seed(0)
    return DomainBatch(source_features=torch.randn(8, FEATURES, generator=generator, requires_grad=True),
                       source_logits=torch.randn(8, 2, generator=generator, requires_grad=True),
                       target_features=torch.randn(6, FEATURES, generator=generator, requires_grad=True),
                       target_logits=torch.randn(6, 2, generator=generator, requires_grad=True), progress=progress)


def test_the_issue_methods_are_registered() -> None:
    assert {"none", "adabn", "dann", "mmd", "coral", "entropy", "target_oracle"} <= set(list_adaptations())


@pytest.mark.parametrize("name", list_adaptations())
def test_every_method_gives_a_finite_scalar_loss(name: str) -> None:
    method = build_adaptation(name, num_features=FEATURES)
    batch = _batch()
    loss = method.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    if method.needs_target:  # the loss reaches the target side it aligns
        loss.backward()
        grads = [t.grad for t in (batch.target_features, batch.target_logits) if t.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["none", "adabn", "target_oracle"])
def test_methods_without_a_training_term_add_exactly_zero(name: str) -> None:
    method = build_adaptation(name, num_features=FEATURES)
    assert not method.needs_target and method.loss(_batch()).item() == 0.0


def test_entropy_weight_stacks_entropy_on_another_method() -> None:
    plain = build_adaptation("coral", num_features=FEATURES, weight=1.0)
    stacked = build_adaptation("coral", num_features=FEATURES, weight=1.0, entropy_weight=0.5)
    alone = build_adaptation("entropy", num_features=FEATURES, weight=0.5)
    assert isinstance(stacked, Combined) and stacked.method_name == "coral+entropy"
    batch = _batch()
    assert torch.allclose(stacked.loss(batch), plain.loss(batch) + alone.loss(batch))


def test_weight_scales_the_loss() -> None:
    batch = _batch()
    one = build_adaptation("mmd", num_features=FEATURES, weight=1.0).loss(batch)
    three = build_adaptation("mmd", num_features=FEATURES, weight=3.0).loss(batch)
    assert torch.allclose(three, 3 * one)


def test_unknown_method_and_unknown_option_are_user_errors() -> None:
    with pytest.raises(MedtlError, match="adaptation.method='gan'.*choose one of"):
        build_adaptation("gan", num_features=FEATURES)
    with pytest.raises(MedtlError, match=r"adaptation.options \['hiden'\].*'dann'.*hidden"):
        build_adaptation("dann", num_features=FEATURES, options={"hiden": 64})
    with pytest.raises(MedtlError, match="adaptation.method='x'"):
        create_adaptation("x")


def test_entropy_cannot_stack_on_the_oracle() -> None:
    with pytest.raises(MedtlError, match="cannot stack on 'target_oracle'"):
        build_adaptation("target_oracle", num_features=FEATURES, entropy_weight=0.1)


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "efficientnet_lite0_3d"], ids=["2.5d", "inflated_3d"])
@pytest.mark.parametrize("name", [n for n in list_adaptations() if build_adaptation(n, num_features=FEATURES).needs_target])
def test_every_training_method_adapts_a_volume_model(name: str, encoder: str) -> None:
    """Volumes go through the same loop as images: a source and a target batch of (B, 1, X, Y, Z) volumes per step,
    the method's loss on their pooled features, and the encoder moves."""
    from functools import partial

    from medtl.engine import Trainer
    from medtl.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier(encoder, "finetune", 2, input_shape=[16, 16, 12], slices={"count": 3})
    method = build_adaptation(name, num_features=model.encoder.num_features)
    volumes = [{"image": torch.randn(2, 1, 16, 16, 12), "label": torch.tensor([0, 1]), "path": [f"v{b}a", f"v{b}b"]}
               for b in range(2)]
    target = [{"image": 1.0 + torch.randn(2, 1, 16, 16, 12)} for _ in range(2)]
    before = [p.detach().clone() for p in model.encoder.encoder_parameters()]
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-2, max_epochs=1, progress=False, device="cpu")
    fit = trainer.fit(model, volumes, volumes, score=lambda preds: {"auroc": 0.5}, adaptation=method,
                      target_loader=target)
    assert np.isfinite(fit.history[0]["train/adaptation_loss"]) and fit.history[0]["train/adaptation_loss"] != 0.0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.encoder.encoder_parameters()))
