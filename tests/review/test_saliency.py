"""Grad-CAM: valid maps for every registered encoder, gradients restored, and the map follows the evidence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medtl.models import STRATEGIES, TransferModel, create_encoder, list_encoders
from medtl.review.saliency import gradcam_maps, gradcam_target_layer
from tests.models.test_registry import chelsea_batch


@pytest.mark.parametrize("name", list_encoders())
def test_gradcam_gives_input_sized_maps_for_every_encoder_and_restores_frozen_parameters(name: str) -> None:
    torch.manual_seed(0)
    encoder = create_encoder(name, weights=None, in_channels=1, image_size=64)
    encoder.reset_head(2)
    model = TransferModel(encoder, STRATEGIES["linear_probe"], 1.0)  # encoder frozen, as a linear probe's is
    frozen = [p.requires_grad for p in model.parameters()]
    spatial = (64, 64, 24) if encoder.spatial_dims == 3 else (64, 64)  # volumes for 3D encoders: 3D maps
    maps = gradcam_maps(model, torch.randn(3, 1, *spatial), [0, 1, 1])
    assert maps.shape == (3, *spatial) and np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert [p.requires_grad for p in model.parameters()] == frozen
    assert gradcam_target_layer(model).startswith("encoder.")


def test_gradcam_of_the_cat_class_lies_on_the_cat() -> None:
    """Chelsea on the left half of a grey canvas: ImageNet's 'tabby cat' evidence sits on the left."""
    encoder = create_encoder("efficientnet_lite0", weights="imagenet", in_channels=3, image_size=224)
    model = TransferModel(encoder, STRATEGIES["linear_probe"], 1.0)  # the ImageNet head, not reset
    cat = torch.nn.functional.interpolate(chelsea_batch(grey=False), size=(112, 112), mode="bilinear")
    canvas = torch.zeros(1, 3, 224, 224)  # 0 is mid-grey after the (x - 0.5) / 0.5 normalisation
    canvas[..., 56:168, :112] = cat
    tabby = 281
    saliency = gradcam_maps(model, canvas, tabby)[0]  # (224, 224)
    assert saliency[:, :112].sum() > 2 * saliency[:, 112:].sum()


def test_a_volume_map_has_one_scale_so_its_strongest_slice_stands_out() -> None:
    from medtl.review.saliency import _unit_scale

    maps = torch.zeros(1, 1, 4, 4, 3)
    maps[..., 0] = 1.0  # strong evidence in slice 0
    maps[..., 2] = 0.1  # weak evidence in slice 2
    scaled = _unit_scale(maps)[0, 0]
    assert scaled[..., 0].max() == 1.0 and scaled[..., 2].max() == pytest.approx(0.1)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_2_5d_gradcam_finds_the_slice_and_the_side_the_cat_is_on(pooling: str) -> None:
    """A volume of grey slices with Chelsea on the left of one axial slice: the 2.5D map of ImageNet's 'tabby cat'
    is strongest at that slice (slices between those sampled are interpolated) and on the left within it."""
    from medtl.models.slices import SliceConfig, SliceEncoder

    encoder = create_encoder("efficientnet_lite0", weights="imagenet", in_channels=1, image_size=224)
    slice_encoder = SliceEncoder(encoder, SliceConfig(axis=2, count=5, pooling=pooling))
    model = TransferModel(slice_encoder, STRATEGIES["finetune" if pooling == "attention" else "linear_probe"], 1.0)
    cat = torch.nn.functional.interpolate(chelsea_batch(grey=True), size=(112, 112), mode="bilinear")[0, 0]  # (H, W)
    volume = torch.zeros(1, 1, 224, 224, 9)  # (N, C, X, Y, Z), 0 is mid-grey; sampled slices: 0, 2, 4, 6, 8
    volume[0, 0, :112, 56:168, 4] = cat.T  # the first half of X in slice 4
    frozen = [p.requires_grad for p in model.parameters()]
    saliency = gradcam_maps(model, volume, 281)[0]  # (X, Y, Z)
    assert saliency.shape == (224, 224, 9) and saliency.min() >= 0.0 and saliency.max() == pytest.approx(1.0)
    per_slice = saliency.sum(axis=(0, 1))
    assert int(per_slice.argmax()) == 4 and per_slice[4] > 2 * per_slice[0]
    assert saliency[:112, :, 4].sum() > 2 * saliency[112:, :, 4].sum()
    assert [p.requires_grad for p in model.parameters()] == frozen
