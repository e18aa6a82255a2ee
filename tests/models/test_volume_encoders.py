"""2D ImageNet encoders on volumes: 2.5D slice pooling and I3D inflation."""
from __future__ import annotations

import pytest
import torch

from medtl.models import build_classifier, create_encoder
from medtl.models.slices import SliceConfig, SliceEncoder
from medtl.errors import MedtlError


def test_inflated_encoder_on_identical_slices_equals_the_2d_encoder() -> None:
    """The I3D fixed point, with the offline ImageNet weights: borders included (depth is padded by replication)."""
    flat = create_encoder("efficientnet_lite0", image_size=64).eval()
    inflated = create_encoder("efficientnet_lite0_3d", image_size=64).eval()
    torch.manual_seed(0)
    image = torch.randn(2, 1, 64, 64)
    volume = image.unsqueeze(-1).repeat(1, 1, 1, 1, 20)  # (B, 1, X, Y, Z): every slice the same
    with torch.no_grad():
        expected, got = flat.forward_features(image), inflated.forward_features(volume)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert "inflated" in inflated.weights_info.source


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("slab", [False, True])
def test_slice_encoder_shapes(pooling: str, slab: bool) -> None:
    encoder = SliceEncoder(create_encoder("efficientnet_lite0", weights=None, in_channels=3 if slab else 1,
                                          image_size=32), SliceConfig(axis=2, count=5, pooling=pooling, slab=slab))
    encoder.reset_head(2)
    volume = torch.randn(3, 1, 32, 32, 20)
    assert encoder.slices(volume).shape == (3, 5, 3 if slab else 1, 32, 32)
    assert encoder.forward_features(volume).shape == (3, 1280)
    encoder(volume).sum().backward()
    if pooling == "attention":
        assert encoder.pool.last_weights.shape == (3, 5)
        torch.testing.assert_close(encoder.pool.last_weights.sum(dim=1), torch.ones(3))
        assert encoder.pool.value.weight.grad is not None


def test_mean_pooling_of_identical_slices_is_the_2d_feature() -> None:
    flat = create_encoder("efficientnet_lite0", image_size=32).eval()
    encoder = SliceEncoder(create_encoder("efficientnet_lite0", image_size=32), SliceConfig(axis=0, count=4)).eval()
    image = torch.randn(1, 1, 32, 32)
    volume = image[:, :, None].repeat(1, 1, 9, 1, 1)  # slices across X all equal the image
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(volume), flat.forward_features(image), atol=1e-5, rtol=1e-5)


def test_build_classifier_picks_the_volume_encoder() -> None:
    slices = build_classifier("efficientnet_lite0", "finetune", 2, input_shape=[32, 32, 24],
                              slices={"count": 4, "pooling": "attention"})
    assert isinstance(slices.encoder, SliceEncoder)
    assert slices(torch.randn(2, 1, 32, 32, 24)).shape == (2, 2)
    assert any(g["name"] == "head" for g in slices.param_groups(1e-3))
    scratch = build_classifier("efficientnet_lite0_3d", "scratch", 2, weights=None, input_shape=[32, 32, 24])
    assert scratch.encoder.spatial_dims == 3 and scratch(torch.randn(2, 1, 32, 32, 24)).shape == (2, 2)
    with pytest.raises(MedtlError, match="pooling=attention trains its attention"):
        build_classifier("efficientnet_lite0", "linear_probe", 2, input_shape=[32, 32, 24],
                         slices={"pooling": "attention"})
    with pytest.raises(MedtlError, match="3D encoder but the data pipeline gives 2D"):
        build_classifier("efficientnet_lite0_3d", "scratch", 2, weights=None, input_shape=[64, 64])
