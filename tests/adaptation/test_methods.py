"""The maths of each method, checked against autograd and closed forms."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from medtl.adaptation import DomainBatch, build_adaptation
from medtl.adaptation.adabn import recompute_batchnorm_statistics, source_statistics_batchnorms
from medtl.adaptation.discrepancy import coral_loss, multi_kernel_mmd
from medtl.adaptation.entropy import prediction_entropy
from medtl.adaptation.gradient_reversal import reverse_gradient, warm_start_coefficient
from medtl.errors import MedtlError
from medtl.models import build_classifier
from medtl.models.card import ModelCard
from medtl.predict import check_adaptable
from tests.models.test_card import example as example_card


@pytest.mark.parametrize("coefficient", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_is_identity_forward_and_flips_and_scales_gradients(coefficient: float) -> None:
    x = torch.randn(5, 4, requires_grad=True)
    upstream = torch.randn(5, 4)
    y = reverse_gradient(x, coefficient)
    assert torch.equal(y, x)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=upstream)
    assert torch.equal(grad, -coefficient * upstream)


def test_warm_start_schedule_ramps_from_zero_to_the_maximum() -> None:
    assert warm_start_coefficient(0.0) == 0.0
    assert warm_start_coefficient(0.5, alpha=10.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert warm_start_coefficient(1.0, alpha=10.0, maximum=0.5) == pytest.approx(0.5 * (2 / (1 + math.exp(-10)) - 1))
    values = [warm_start_coefficient(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 1.0


def test_dann_discriminator_gets_plain_gradients_and_the_features_reversed_ones() -> None:
    method = build_adaptation("dann", num_features=8, options={"alpha": 10.0})
    source, target = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    batch = DomainBatch(source, torch.zeros(6, 2), target, torch.zeros(6, 2), progress=0.3)
    (source_grad,) = torch.autograd.grad(method.loss(batch), source)
    # the same loss without reversal, through the same discriminator: gradient of opposite sign, scaled
    method.reversal.maximum = 0.0
    features = torch.cat([source, target])
    labels = torch.cat([torch.ones(6), torch.zeros(6)])
    plain = nn.functional.binary_cross_entropy_with_logits(method.discriminator(features).squeeze(1), labels)
    (plain_grad,) = torch.autograd.grad(plain, source)
    assert torch.allclose(source_grad, -warm_start_coefficient(0.3) * plain_grad, atol=1e-6)
    metrics = method.epoch_metrics()
    assert 0.0 <= metrics["domain_discriminator_accuracy"] <= 1.0 and method.epoch_metrics() == {}


def test_mmd_of_identical_batches_is_zero_and_grows_with_a_mean_shift() -> None:
    x = torch.randn(32, 10, generator=torch.Generator().manual_seed(1))
    assert multi_kernel_mmd(x, x.clone()).abs().item() < 1e-6
    y = torch.randn(32, 10, generator=torch.Generator().manual_seed(2))
    values = [multi_kernel_mmd(x, y + shift).item() for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 10 * values[0] > 0


def test_coral_is_zero_for_equal_covariances_and_positive_otherwise() -> None:
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(3))
    assert coral_loss(x, x + 5.0).item() == pytest.approx(0.0, abs=1e-10)  # a mean shift leaves covariance alone
    assert coral_loss(x, x * 3.0).item() > 0.1
    expected = (torch.cov(x.T) - torch.cov((2 * x).T)).pow(2).sum() / (4 * 36)
    assert coral_loss(x, 2 * x).item() == pytest.approx(expected.item())


def test_entropy_is_zero_for_confident_and_log_k_for_uniform_predictions() -> None:
    assert prediction_entropy(torch.tensor([[50.0, -50.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert prediction_entropy(torch.zeros(3, 4)).item() == pytest.approx(math.log(4))


def test_adabn_changes_batchnorm_running_statistics_and_nothing_else() -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=64).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = [{"image": 2.0 + 0.5 * torch.randn(4, 1, 64, 64)} for _ in range(3)]  # brighter "site"
    adapted = recompute_batchnorm_statistics(model, target, torch.device("cpu"), progress=False)
    after = adapted.state_dict()
    running = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= running
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the original is untouched"
    momenta = [(m.momentum, m.training) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert not adapted.training and momenta == [(m.momentum, False) for m in adapted.modules()
                                                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    first_bn = next(m for m in adapted.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    assert first_bn.num_batches_tracked.item() == 3


def _two_class_site(generator: torch.Generator) -> list[dict]:
    """Six batches of 4, sorted by class as a class-per-folder tree is read: dark then bright images."""
    dark = [{"image": 0.2 + 0.1 * torch.randn(4, 1, 32, 32, generator=generator)} for _ in range(3)]
    return dark + [{"image": 1.5 + 0.3 * torch.randn(4, 1, 32, 32, generator=generator)} for _ in range(3)]


def test_adabn_mixes_a_class_sorted_site_so_the_variance_spans_both_classes() -> None:
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32).eval()
    images = torch.cat([b["image"] for b in _two_class_site(torch.Generator().manual_seed(0))])  # (24, 1, 32, 32)
    sorted_site = DataLoader([{"image": image} for image in images], batch_size=4)  # one class per batch
    seen: list[torch.Tensor] = []
    name, first_bn = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    hook = first_bn.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        model(images)  # nothing before the first BatchNorm depends on statistics
    hook.remove()
    pooled = seen[0].var((0, 2, 3))  # the first BatchNorm's input over the whole site: (C,)
    in_order = recompute_batchnorm_statistics(model, list(sorted_site), torch.device("cpu"), progress=False)
    shuffled = recompute_batchnorm_statistics(model, sorted_site, torch.device("cpu"), progress=False)
    again = recompute_batchnorm_statistics(model, sorted_site, torch.device("cpu"), progress=False)
    ratio = {key: (dict(adapted.named_modules())[name].running_var / pooled).median().item()
             for key, adapted in (("in order", in_order), ("shuffled", shuffled))}
    assert ratio["in order"] < 0.5, ratio  # one-class batches miss the spread between the classes
    assert 0.75 < ratio["shuffled"] < 1.25, ratio
    assert all(torch.equal(a, b) for a, b in zip(shuffled.state_dict().values(), again.state_dict().values()))


def test_adabn_reestimates_only_layers_that_learnt_source_statistics() -> None:
    probe = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=32).eval()
    assert source_statistics_batchnorms(probe) == [] and not probe.training  # the mode is put back
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32,
                             frozen_stages=3).eval()
    names = source_statistics_batchnorms(model)
    all_bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    frozen = {n for stage in model.encoder.stage_modules()[:3] for module in stage
              for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and any(m is x for x in module.modules())}
    assert names and frozen and set(names) == set(all_bn) - frozen
    adapted = recompute_batchnorm_statistics(model, _two_class_site(torch.Generator().manual_seed(1)),
                                             torch.device("cpu"), progress=False, names=names)
    before, after = dict(model.named_buffers()), dict(adapted.named_buffers())
    changed = {k.rsplit(".", 1)[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(names)
    with pytest.raises(MedtlError, match="'encoder.nope' named for AdaBN is not in the model's encoder"):
        recompute_batchnorm_statistics(model, [], torch.device("cpu"), names=["encoder.nope"])


def test_predict_refuses_adabn_for_a_model_with_nothing_to_reestimate() -> None:
    import dataclasses

    check_adaptable(example_card())
    check_adaptable(dataclasses.replace(example_card(), source_batchnorms=None))  # an older card: every layer
    probe: ModelCard = dataclasses.replace(example_card(), strategy="linear_probe", source_batchnorms=())
    with pytest.raises(MedtlError, match="strategy linear_probe.*nothing to re-estimate; use adaptation=none"):
        check_adaptable(probe)
