"""Encoder registry: one decorator per encoder, one small interface for all of them.

Adding an encoder is one file with one ``@register_encoder("name")`` function that returns an
:class:`Encoder`; configs then select it with ``model.encoder=name``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from medtl.errors import MedtlError

__all__ = ["WeightsInfo", "Encoder", "register_encoder", "create_encoder", "list_encoders", "sum_rgb_kernels"]


@dataclass(frozen=True)
class WeightsInfo:
    """What an encoder's weights expect and where they came from.

    Attributes:
        source: where the weights were loaded from (``"random"`` for no pretraining).
        mean, std: per-channel normalisation of inputs in ``input_range``: ``(x - mean) / std``.
        input_range: range of the pixel values before normalisation.
        input_size: the training resolution of the weights (inputs of other sizes still work).
        in_channels: channels the encoder takes after any first-layer adaptation.
        gradcam_layer: dotted name of the module whose activations Grad-CAM should use.
        sha256: checksum of the weight file, when there is one.
    """

    source: str
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    input_range: tuple[float, float] = (0.0, 1.0)
    input_size: int = 224
    in_channels: int = 3
    gradcam_layer: str = ""
    sha256: str | None = None


class Encoder(nn.Module):
    """Interface shared by every encoder.

    Subclasses set ``num_features``, ``weights_info`` and ``head`` and implement :meth:`_features`;
    :meth:`forward_features` adapts grey input first (``repeat_grey``: ``(B, 1, H, W)`` is expanded to
    three channels for an RGB stem) and :meth:`forward` applies the head to the pooled features.
    """

    num_features: int
    weights_info: WeightsInfo
    head: nn.Module
    repeat_grey: bool = False
    spatial_dims: int = 2  # 2: (B, C, H, W) images; 3: (B, C, X, Y, Z) volumes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: ``(B, C, H, W)`` -> ``(B, num_features)``."""
        if self.repeat_grey:
            x = x.expand(-1, 3, *x.shape[2:])  # (B, 1, *spatial) -> (B, 3, *spatial)
        return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, C, H, W)`` -> ``(B, num_classes)``."""
        return self.head(self.forward_features(x))

    def reset_head(self, num_classes: int, dropout: float = 0.0) -> None:
        """Replace the classification head with a fresh ``num_features -> num_classes`` layer."""
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))

    def gradcam_layer(self) -> str:
        """Dotted name, inside the encoder, of the module whose activations Grad-CAM reads: the layer its weights
        name (``weights_info.gradcam_layer``), else the last convolution before the head."""
        if self.weights_info.gradcam_layer:
            return self.weights_info.gradcam_layer
        convolutions = [name for name, module in self.named_modules()
                        if isinstance(module, (nn.Conv2d, nn.Conv3d)) and not name.startswith("head")]
        if not convolutions:
            raise MedtlError(f"{type(self).__name__} has no convolution for Grad-CAM; set its "
                             "weights_info.gradcam_layer to the module to explain")
        return convolutions[-1]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not part of the head."""
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def stage_modules(self) -> list[list[nn.Module]]:
        """The encoder's stages from input to output (for layer-wise rates and gradual unfreezing).

        The default is one stage holding everything but the head; encoders override it.
        """
        return [[module for name, module in self.named_children() if name != "head"]]

    def stage_parameters(self) -> list[list[nn.Parameter]]:
        """Parameters per stage, input to output; every encoder parameter in exactly one stage."""
        stages = [[p for module in stage for p in module.parameters()] for stage in self.stage_modules()]
        covered = {id(p) for stage in stages for p in stage}
        rest = [p for p in self.encoder_parameters() if id(p) not in covered]
        if rest:  # parameters outside the named stages join the first one
            stages[0] = rest + stages[0]
        return stages


def sum_rgb_kernels(conv: nn.Conv2d) -> nn.Conv2d:
    """A one-channel copy of an RGB convolution: kernels summed over the input channels.

    On a grey image it gives exactly what ``conv`` gives on that image repeated to three channels.
    """
    grey = type(conv)(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        grey.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            grey.bias.copy_(conv.bias)
    return grey


EncoderFactory = Callable[..., Encoder]
_ENCODERS: dict[str, EncoderFactory] = {}


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Register ``factory(weights, weights_path, in_channels, image_size) -> Encoder`` under ``name``."""

    def decorator(factory: EncoderFactory) -> EncoderFactory:
        if name in _ENCODERS:
            raise ValueError(f"encoder '{name}' is registered twice")
        _ENCODERS[name] = factory
        return factory

    return decorator


def create_encoder(name: str, weights: str | None = "imagenet", weights_path: str | None = None,
                   in_channels: int = 1, image_size: int = 224, grey_input: str = "sum") -> Encoder:
    """Build a registered encoder; ``weights=None`` gives a random initialisation.

    For ``in_channels=1``, ``grey_input="sum"`` collapses the first convolution to one channel by
    summing its RGB kernels; ``"repeat"`` keeps the RGB stem and repeats the grey channel. Both give
    the same output for a grey image; ``sum`` does a third of the stem's work.
    """
    if grey_input not in ("sum", "repeat"):
        raise MedtlError(f"model.grey_input='{grey_input}' is unknown; use sum or repeat")
    repeat = in_channels == 1 and grey_input == "repeat"
    encoder = _build_encoder(name, weights, weights_path, 3 if repeat else in_channels, image_size)
    if repeat:
        encoder.repeat_grey = True
        encoder.weights_info = replace(encoder.weights_info, in_channels=1)
    return encoder


def _build_encoder(name: str, weights: str | None, weights_path: str | None, in_channels: int,
                   image_size: int) -> Encoder:
    from medtl.models.timm_encoder import TIMM_PREFIX, create_timm_encoder

    if name.startswith(TIMM_PREFIX):
        return create_timm_encoder(name, weights, weights_path, in_channels)
    if name not in _ENCODERS:
        raise MedtlError(f"model.encoder='{name}' is not a registered encoder; choose one of {list_encoders()} "
                         f"or timm/<name> with the timm extra")
    return _ENCODERS[name](weights=weights, weights_path=weights_path, in_channels=in_channels, image_size=image_size)


def list_encoders() -> list[str]:
    """Names of all registered encoders, sorted."""
    return sorted(_ENCODERS)
