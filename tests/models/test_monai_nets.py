"""DenseNet121, ResNet-18/50 and EfficientNet-B0: grey input, strict weight loading, offline errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from medtl.errors import MedtlError
from medtl.models import create_encoder, list_encoders
from medtl.models.monai_nets import WEIGHT_URLS

IMAGENET_ENCODERS = sorted(WEIGHT_URLS)


@pytest.mark.parametrize("name", list_encoders())
def test_sum_and_repeat_give_the_same_output_for_a_grey_image(name: str) -> None:
    torch.manual_seed(0)
    summed = create_encoder(name, weights=None, in_channels=1, image_size=64, grey_input="sum").eval()
    torch.manual_seed(0)
    repeated = create_encoder(name, weights=None, in_channels=1, image_size=64, grey_input="repeat").eval()
    x = torch.randn(2, 1, 64, 64, *((24,) if summed.spatial_dims == 3 else ()))  # volumes for 3D encoders
    with torch.no_grad():
        torch.testing.assert_close(summed(x), repeated(x), rtol=1e-4, atol=1e-4)
    assert repeated.weights_info.in_channels == 1 and repeated.repeat_grey


def published_layout(name: str, encoder) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The encoder's weights renamed as the published files name them (torchvision / lukemelas)."""
    state = {k: v.clone() for k, v in encoder.net.state_dict().items()}
    head_prefix = {"densenet121": "classifier.", "efficientnet_b0": "_fc."}.get(name, "fc.")
    state.update({head_prefix + k: v.clone() for k, v in encoder.head.state_dict().items()})
    if name == "densenet121":  # torchvision's old names: denselayer1.norm.1.weight
        state = {re.sub(r"\.layers\.(norm|relu|conv)([12])\.", r".\1.\2.", k): v for k, v in state.items()}
    if name == "efficientnet_b0":  # lukemelas: flat _blocks.N
        state = {re.sub(r"^_blocks\.\d+\.(\d+)\.", r"_blocks.\1.", k): v for k, v in state.items()}
    return state


@pytest.mark.parametrize("name", IMAGENET_ENCODERS)
def test_weight_file_in_the_published_layout_loads_strictly(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = create_encoder(name, weights=None, in_channels=3, image_size=64)
    path = tmp_path / "weights.pth"
    torch.save(published_layout(name, source), path)
    loaded = create_encoder(name, weights="imagenet", weights_path=str(path), in_channels=3, image_size=64)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    assert loaded.weights_info.source == "imagenet:weights.pth" and loaded.weights_info.mean == (0.485, 0.456, 0.406)

    incomplete = published_layout(name, source)
    incomplete.pop(next(iter(incomplete)))
    torch.save(incomplete, path)
    with pytest.raises(MedtlError, match=f"ImageNet weights do not fit {name}"):
        create_encoder(name, weights="imagenet", weights_path=str(path), in_channels=3, image_size=64)


@pytest.mark.parametrize("name", IMAGENET_ENCODERS)
def test_no_weights_offline_is_an_error_that_names_the_file(name: str, tmp_path: Path) -> None:
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache
    try:
        with pytest.raises(MedtlError, match=re.escape(Path(WEIGHT_URLS[name]).name) + ".*model.weights_path"):
            create_encoder(name, weights="imagenet", in_channels=1, image_size=64)
    finally:
        torch.hub.set_dir(previous)


def test_cached_download_is_used_offline(tmp_path: Path) -> None:
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        torch.manual_seed(2)
        source = create_encoder("resnet18", weights=None, in_channels=3, image_size=64)
        (tmp_path / "checkpoints").mkdir()
        torch.save(published_layout("resnet18", source), tmp_path / "checkpoints" / Path(WEIGHT_URLS["resnet18"]).name)
        loaded = create_encoder("resnet18", weights="imagenet", in_channels=3, image_size=64)
        torch.testing.assert_close(loaded.net.conv1.weight, source.net.conv1.weight)
    finally:
        torch.hub.set_dir(previous)


def test_pickled_objects_are_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module, not a state_dict
    with pytest.raises(MedtlError, match="as a plain state_dict"):
        create_encoder("resnet18", weights="imagenet", weights_path=str(path))
