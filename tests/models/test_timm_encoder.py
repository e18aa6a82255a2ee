"""``model.encoder=timm/<name>``: the adapter against timm's ``create_model`` contract."""
from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.models import build_classifier, create_encoder


class FakeTimmModel(nn.Module):
    """What ``timm.create_model(..., num_classes=0)`` returns: pooled features and ``num_features``."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.conv, self.num_features = nn.Conv2d(in_chans, 8, 3), 8
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 256, 256)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    calls: list[dict] = []

    def create_model(arch: str, **kwargs):  # type: ignore[no-untyped-def]
        calls.append({"arch": arch, **kwargs})
        if arch == "nope":
            raise RuntimeError("Unknown model (nope)")
        return FakeTimmModel(kwargs["in_chans"])

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    return calls


def test_timm_encoder_is_built_without_classifier_and_trains(fake_timm: list[dict]) -> None:
    model = build_classifier("timm/convnext_tiny", "finetune", num_classes=3, weights="imagenet",
                             weights_path="/weights/convnext.safetensors", image_size=64)
    assert fake_timm[0] == {"arch": "convnext_tiny", "pretrained": True, "num_classes": 0, "in_chans": 1,
                            "pretrained_cfg_overlay": {"file": "/weights/convnext.safetensors"}}
    info = model.encoder.weights_info
    assert (info.mean, info.std, info.input_size, info.source) == ((0.5,) * 3, (0.25,) * 3, 256, "timm:convnext_tiny")
    logits = model(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert model.encoder.net.conv.weight.grad is not None


def test_timm_errors_are_user_errors(fake_timm: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MedtlError, match="timm could not create nope"):
        create_encoder("timm/nope", weights=None)
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(MedtlError, match=r"pip install 'medtl\[timm\]'"):
        create_encoder("timm/resnet18")
