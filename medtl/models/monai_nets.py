"""ImageNet encoders built on MONAI networks: DenseNet121, ResNet-18/50 and EfficientNet-B0.

Their ImageNet weights are not shipped. They come from ``model.weights_path`` (a local file with
torchvision-style keys, or lukemelas-style for EfficientNet-B0) or from the usual download, which
torch.hub caches under ``$TORCH_HOME``; with ``MEDTL_OFFLINE=1`` or no network a cached file is
still used. When no weights can be had the error says which file to fetch: never a silent random
initialisation. Weights are loaded strictly: every key must fit.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from monai.networks.nets import DenseNet121, EfficientNetBN, resnet18, resnet50
from torch import nn

from medtl.errors import MedtlError
from medtl.models.efficientnet import efficientnet_features, efficientnet_stages
from medtl.models.registry import Encoder, WeightsInfo, register_encoder, sum_rgb_kernels

__all__ = ["MonaiEncoder", "IMAGENET_MEAN", "IMAGENET_STD", "WEIGHT_URLS", "load_weights_file"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WEIGHT_URLS = {
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "efficientnet_b0": "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/efficientnet-b0-355c32eb.pth",
}
_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+)(\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


class MonaiEncoder(Encoder):
    """A MONAI network split into a feature extractor and an ImageNet head (until :meth:`reset_head`).

    Args:
        net: the MONAI network with its classifier removed (replaced by ``nn.Identity``).
        features: ``net -> (B, C, H, W) -> (B, F)`` pooled features.
        head: the network's original classifier.
        stem: dotted name of the first convolution (collapsed to one channel for grey input).
    """

    def __init__(self, net: nn.Module, features: Callable[[nn.Module, torch.Tensor], torch.Tensor], head: nn.Module,
                 num_features: int, stem: str, weights_info: WeightsInfo) -> None:
        super().__init__()
        self.net, self._forward_net, self.head = net, features, head
        self.num_features, self.stem, self.weights_info = num_features, stem, weights_info

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_net(self.net, x)

    def stage_modules(self) -> list[list[nn.Module]]:
        """Stem, then the network's stages (ResNet layers, DenseNet blocks with their transitions, MBConv stages)."""
        net = self.net
        if hasattr(net, "layer1"):  # ResNet
            return [[net.conv1, net.bn1], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]
        if hasattr(net, "features"):  # DenseNet: stem conv0/norm0, then blockN (+ transitionN), norm5 with the last
            children = dict(net.features.named_children())
            blocks = sorted(n for n in children if n.startswith("denseblock"))
            stages = [[children["conv0"], children["norm0"]]]
            stages += [[children[b]] + ([children[f"transition{b[-1]}"]] if f"transition{b[-1]}" in children else [])
                       for b in blocks]
            stages[-1].append(children["norm5"])
            return stages
        return efficientnet_stages(net)

    def collapse_stem_to_grey(self) -> None:
        """Sum the first convolution's RGB kernels: one grey channel gives the RGB output of that grey image."""
        parent_name, _, attr = self.stem.rpartition(".")
        parent = self.net.get_submodule(parent_name) if parent_name else self.net
        setattr(parent, attr, sum_rgb_kernels(getattr(parent, attr)))


def _resnet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.act(net.bn1(net.conv1(x))))  # (B, 64, H/4, W/4)
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))  # (B, F, H/32, W/32)
    return net.avgpool(x).flatten(1)  # (B, F)


def _densenet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.features(x)  # (B, 1024, H/32, W/32)
    return net.class_layers.flatten(net.class_layers.pool(net.class_layers.relu(x)))  # (B, 1024)


def _build(name: str, image_size: int) -> tuple[nn.Module, Callable, nn.Module, int, str, str]:
    """(net without classifier, features function, ImageNet head, F, stem name, Grad-CAM layer)."""
    if name == "densenet121":
        net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000)
        head, net.class_layers.out = net.class_layers.out, nn.Identity()
        # Grad-CAM reads the ReLU after the last dense block (its output is not modified in place afterwards).
        return net, _densenet_features, head, 1024, "features.conv0", "net.class_layers.relu"
    if name in ("resnet18", "resnet50"):
        factory = resnet18 if name == "resnet18" else resnet50
        net = factory(spatial_dims=2, n_input_channels=3, num_classes=1000, conv1_t_size=7, conv1_t_stride=2,
                      bias_downsample=False)  # torchvision's layout
        head, net.fc = net.fc, nn.Identity()
        return net, _resnet_features, head, 512 if name == "resnet18" else 2048, "conv1", "net.layer4"
    net = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=1000)
    head, net._fc = net._fc, nn.Identity()
    return net, efficientnet_features, head, 1280, "_conv_stem", "net._conv_head"


def _make(name: str, weights: str | None, weights_path: str | None, in_channels: int, image_size: int) -> MonaiEncoder:
    if weights not in (None, "imagenet"):
        raise MedtlError(f"model.weights='{weights}' is not available for {name}; use imagenet or null")
    if in_channels not in (1, 3):
        raise MedtlError(f"model.in_channels={in_channels} is not supported by {name}; use 1 or 3")
    net, features, head, num_features, stem, gradcam = _build(name, image_size)
    source = "random"
    if weights == "imagenet":
        state, source = _imagenet_state(name, weights_path)
        _load_strict(name, net, head, state)
    info = WeightsInfo(source=source, mean=IMAGENET_MEAN, std=IMAGENET_STD, in_channels=in_channels,
                       input_size=224, gradcam_layer=gradcam)
    encoder = MonaiEncoder(net, features, head, num_features, stem, info)
    if in_channels == 1:
        encoder.collapse_stem_to_grey()
    return encoder


def _imagenet_state(name: str, weights_path: str | None) -> tuple[dict[str, torch.Tensor], str]:
    if weights_path:
        return load_weights_file(Path(weights_path)), f"imagenet:{Path(weights_path).name}"
    url = WEIGHT_URLS[name]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        return load_weights_file(cached), f"imagenet:{cached.name}"
    if os.environ.get("MEDTL_OFFLINE"):
        raise MedtlError(f"no ImageNet weights for {name} offline (MEDTL_OFFLINE is set): download {url} and pass "
                         f"model.weights_path=<file>, or use model.encoder=efficientnet_lite0 (weights included)")
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        raise MedtlError(f"could not download ImageNet weights for {name} from {url} ({type(exc).__name__}); download "
                         "it elsewhere and pass model.weights_path=<file>, or use model.encoder=efficientnet_lite0") from exc
    return state, f"imagenet:{Path(url).name}"


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from ``path`` with ``weights_only=True`` (no pickle code runs)."""
    if not path.is_file():
        raise MedtlError(f"weight file {path} does not exist; fix model.weights_path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or pickled-object file
        raise MedtlError(f"cannot load weight file {path} as a plain state_dict ({type(exc).__name__}); "
                         "save it with torch.save(model.state_dict(), path)") from exc
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _load_strict(name: str, net: nn.Module, head: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """torchvision / lukemelas keys -> MONAI module names; every key must fit, or the error says which."""
    mapped: dict[str, torch.Tensor] = {}
    head_prefix = {"densenet121": "classifier.", "resnet18": "fc.", "resnet50": "fc.", "efficientnet_b0": "_fc."}[name]
    head_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(head_prefix):
            head_state[key[len(head_prefix):]] = value
            continue
        match = _DENSE_LAYER_KEY.match(key)
        mapped[f"{match.group(1)}.layers{match.group(2)}{match.group(3)}" if match else key] = value
    if name == "efficientnet_b0":
        stage_of = {int(i): s for s, sub in enumerate(net._blocks) for i in sub._modules}
        mapped = {re.sub(r"^_blocks\.(\d+)\.", lambda m: f"_blocks.{stage_of[int(m.group(1))]}.{m.group(1)}.", k): v
                  for k, v in mapped.items()}
    try:
        net.load_state_dict(mapped, strict=True)
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = (lines[1] if len(lines) > 1 else lines[0]).strip()
        first = first if len(first) <= 160 else first[:160] + "..."
        raise MedtlError(f"ImageNet weights do not fit {name}: {first}; pass the torchvision (or, for "
                         "efficientnet_b0, lukemelas) weights of that architecture") from exc


for _name in WEIGHT_URLS:
    register_encoder(_name)(lambda weights="imagenet", weights_path=None, in_channels=1, image_size=224, _n=_name:
                            _make(_n, weights, weights_path, in_channels, image_size))
