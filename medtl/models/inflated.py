"""EfficientNet-Lite0 in 3D with its 2D ImageNet kernels inflated along depth (I3D, Carreira & Zisserman 2017).

MONAI's ``EfficientNet`` built with ``spatial_dims=3``; every 2D kernel ``(O, I, k, k)`` becomes
``(O, I, k, k, k)`` by repeating it ``k`` times along depth (the volume's Z axis) and dividing by ``k``, and the
BatchNorm and head weights are copied. MONAI pads "same" with zeros, computed once for a cube of ``image_size``;
here the padding is computed from each input's own size, and depth is padded by replication (height and width
keep zeros), so a volume of identical slices gives exactly the 2D encoder's features of that slice at every
layer (the I3D "boring video" fixed point), borders included, and thin volumes do not collapse.
Layout: ``(B, C, X, Y, Z)`` -> features ``(B, 1280)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets.efficientnet import EfficientNet
from torch import nn

from medtl.errors import MedtlError
from medtl.models.efficientnet import (
    IMAGENET_CLASSES,
    LITE0_BLOCKS,
    efficientnet_features,
    efficientnet_lite0,
    efficientnet_stages,
)
from medtl.models.registry import Encoder, WeightsInfo, register_encoder, sum_rgb_kernels

__all__ = ["InflatedLite0", "DepthReplicatePad", "inflate_state_dict"]


class DepthReplicatePad(nn.Module):
    """"Same" padding of a ``(B, C, X, Y, Z)`` tensor for ``conv``, computed from the input's own size (any volume
    shape works, not only the one the network was built for): replicated along Z, zeros along X and Y."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.dilation = tuple(conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[2:], self.kernel, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)  # TensorFlow's "same"
            pads.append((total // 2, total - total // 2))
        (x0, x1), (y0, y1), (z0, z1) = pads
        if z0 or z1:
            x = nn.functional.pad(x, (z0, z1, 0, 0, 0, 0), mode="replicate")
        return nn.functional.pad(x, (0, 0, y0, y1, x0, x1)) if (y0 or y1 or x0 or x1) else x


class InflatedLite0(Encoder):
    """EfficientNet-Lite0 on volumes: ``(B, C, X, Y, Z)`` -> features ``(B, 1280)`` -> head logits."""

    num_features = 1280
    spatial_dims = 3

    def __init__(self, in_channels: int, image_size: int, weights_info: WeightsInfo) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise MedtlError(f"model.in_channels={in_channels} is not supported by efficientnet_lite0_3d; use 1 or 3")
        self.net = EfficientNet(LITE0_BLOCKS, spatial_dims=3, in_channels=3, num_classes=IMAGENET_CLASSES,
                                image_size=image_size)
        for module in self.net.modules():
            if hasattr(module, "_swish"):
                module._swish = nn.ReLU6()
        _replicate_depth_padding(self.net)
        self.head, self.net._fc = self.net._fc, nn.Identity()
        self.weights_info = weights_info
        if in_channels == 1:
            self.net._conv_stem = sum_rgb_kernels(self.net._conv_stem)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return efficientnet_features(self.net, x)

    def stage_modules(self) -> list[list[nn.Module]]:
        return efficientnet_stages(self.net)


def inflate_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """2D weights -> 3D: each 4D kernel ``(O, I, k, k)`` repeated ``k`` times along a new last (depth) axis, / ``k``."""
    inflated = {}
    for key, value in state.items():
        if value.ndim == 4:
            depth = value.shape[-1]
            value = value.unsqueeze(-1).repeat(1, 1, 1, 1, depth) / depth  # (O, I, k, k) -> (O, I, k, k, k)
        inflated[key] = value
    return inflated


def _replicate_depth_padding(net: nn.Module) -> None:
    """Replace MONAI's static padders (``<conv>_padding`` beside each ``<conv>``) with :class:`DepthReplicatePad`."""
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.ConstantPad3d) and name.endswith("_padding"):
            parent_name, _, attr = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, attr, DepthReplicatePad(getattr(parent, attr.removesuffix("_padding"))))


def _image_size(image_size: int | Sequence[int]) -> int:
    return int(max(image_size)) if isinstance(image_size, Sequence) else int(image_size)


@register_encoder("efficientnet_lite0_3d")
def efficientnet_lite0_3d(weights: str | None = "imagenet", weights_path: str | None = None, in_channels: int = 1,
                          image_size: int | Sequence[int] = 64) -> InflatedLite0:
    """Inflated EfficientNet-Lite0; ``weights="imagenet"`` inflates the offline 2D ImageNet weights (or
    ``weights_path``'s), ``None`` is a random 3D initialisation (the ``scratch`` baseline)."""
    size = _image_size(image_size)
    if weights is None:
        return InflatedLite0(in_channels, size, WeightsInfo(source="random", in_channels=in_channels))
    flat = efficientnet_lite0(weights, weights_path, in_channels=in_channels, image_size=size)
    info = WeightsInfo(source=f"{flat.weights_info.source} (inflated to 3D)", in_channels=in_channels,
                       input_size=flat.weights_info.input_size, gradcam_layer="net._conv_head",
                       sha256=flat.weights_info.sha256)
    encoder = InflatedLite0(in_channels, size, info)
    missing, unexpected = encoder.load_state_dict(inflate_state_dict(flat.state_dict()), strict=False)
    if missing or unexpected:
        raise MedtlError(f"inflated Lite0 weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return encoder
