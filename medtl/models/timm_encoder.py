"""Any timm model as an encoder: ``model.encoder=timm/<name>`` (needs the optional ``timm`` extra).

timm builds the model without its classifier (``num_classes=0``, so the model returns pooled
features ``(B, F)``), adapts the first convolution to one input channel itself (summing the RGB
kernels, as medtl does) and loads ``pretrained`` weights from its hub, or from ``model.weights_path``.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.models.registry import Encoder, WeightsInfo

__all__ = ["TIMM_PREFIX", "TimmEncoder", "create_timm_encoder"]

TIMM_PREFIX = "timm/"


class TimmEncoder(Encoder):
    """A timm feature model ``(B, C, H, W)`` -> ``(B, num_features)`` plus a linear head."""

    def __init__(self, model: nn.Module, weights_info: WeightsInfo) -> None:
        super().__init__()
        self.net, self.weights_info = model, weights_info
        self.num_features = int(model.num_features)
        self.head = nn.Linear(self.num_features, 1000)  # placeholder until reset_head()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def create_timm_encoder(name: str, weights: str | None, weights_path: str | None, in_channels: int) -> TimmEncoder:
    """Build ``timm/<name>``; errors say how to install timm or provide weights."""
    try:
        timm = importlib.import_module("timm")
    except ImportError as exc:
        raise MedtlError(f"model.encoder={name} needs timm: pip install 'medtl[timm]'") from exc
    arch = name[len(TIMM_PREFIX):]
    kwargs: dict = {"pretrained": weights == "imagenet", "num_classes": 0, "in_chans": in_channels}
    if weights == "imagenet" and weights_path:
        kwargs["pretrained_cfg_overlay"] = {"file": weights_path}
    try:
        model = timm.create_model(arch, **kwargs)
    except Exception as exc:  # noqa: BLE001 - unknown names and failed downloads alike
        raise MedtlError(f"timm could not create {arch} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                         "check the name with timm.list_models(), or pass model.weights_path=<file> offline") from exc
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    info = WeightsInfo(source=f"timm:{arch}" if weights == "imagenet" else "random",
                       mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                       in_channels=in_channels, input_size=int(cfg.get("input_size", (3, 224, 224))[-1]))
    return TimmEncoder(model, info)
