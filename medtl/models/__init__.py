"""Encoders (behind a registry) and the transfer strategies that adapt them."""
from __future__ import annotations

from medtl.models import efficientnet as _efficientnet  # noqa: F401 - registers efficientnet_lite0
from medtl.models import monai_nets as _monai_nets  # noqa: F401 - registers densenet121, resnet18/50, efficientnet_b0
from medtl.models import inflated as _inflated  # noqa: F401 - registers efficientnet_lite0_3d
from medtl.models.classifier import STRATEGIES, Strategy, TransferModel, build_classifier
from medtl.models.registry import Encoder, WeightsInfo, create_encoder, list_encoders, register_encoder

__all__ = ["STRATEGIES", "Strategy", "TransferModel", "build_classifier", "Encoder", "WeightsInfo",
           "create_encoder", "list_encoders", "register_encoder"]
