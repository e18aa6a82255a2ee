from __future__ import annotations

from functools import partial

import pytest
import torch

from medtl.engine.loop import Trainer, encode_features, predict_loader
from medtl.engine.runtime import (current_memory_format, in_memory_format, memory_format_for, native_bfloat16,
                                  to_memory_format)
from medtl.errors import MedtlError
from medtl.models import build_classifier
from tests.engine.test_loop import fake_loader


def test_auto_layout_is_channels_last_for_2d_models_and_contiguous_for_3d_ones() -> None:
    two_d = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32)
    slices = build_classifier("efficientnet_lite0", "finetune", num_classes=2, input_shape=[32, 32, 8],
                              slices={"count": 4})
    three_d = build_classifier("efficientnet_lite0_3d", "finetune", num_classes=2, input_shape=[32, 32, 32])
    assert memory_format_for(two_d) == torch.channels_last
    assert memory_format_for(slices) == torch.channels_last  # 2.5D: a 2D encoder over slices
    assert memory_format_for(three_d) == torch.contiguous_format
    assert memory_format_for(two_d, "contiguous") == torch.contiguous_format
    with pytest.raises(MedtlError, match="trainer.memory_format=channels_last needs a 2D model"):
        memory_format_for(three_d, "channels_last")
    with pytest.raises(MedtlError, match="trainer.memory_format='nhwc' is unknown"):
        memory_format_for(two_d, "nhwc")


def test_layout_block_nests_and_leaves_the_model_as_it_was() -> None:
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32, in_channels=3)
    kernel = model.encoder.net._conv_stem  # (32, 3, 3, 3)
    with in_memory_format(model, torch.channels_last):
        assert kernel.weight.is_contiguous(memory_format=torch.channels_last)
        assert not kernel.weight.is_contiguous()
        with in_memory_format(model, torch.channels_last):
            pass
        assert kernel.weight.is_contiguous(memory_format=torch.channels_last)  # the inner block changed nothing
        assert current_memory_format(model) == torch.channels_last
    assert kernel.weight.is_contiguous()
    assert current_memory_format(model) == torch.contiguous_format
    images = torch.randn(2, 3, 8, 8)
    assert to_memory_format(images, torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    assert to_memory_format(torch.randn(2, 1, 4, 4, 4), torch.channels_last).is_contiguous()  # 5D: unchanged


def test_channels_last_predictions_equal_contiguous_ones() -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32)
    loader = fake_loader(2)
    plain = Trainer(partial(torch.optim.AdamW), device="cpu", progress=False, memory_format="contiguous")
    fast = Trainer(partial(torch.optim.AdamW), device="cpu", progress=False, memory_format="auto")
    expected = plain.predict(model, loader).probs
    assert fast.predict(model, loader).probs == pytest.approx(expected, abs=1e-5)
    assert current_memory_format(model) == torch.contiguous_format  # back to the usual layout afterwards


def test_bfloat16_features_are_close_to_float32_ones() -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=32)
    loader = fake_loader(2)
    exact = encode_features(model, loader, torch.device("cpu"), progress=False).features
    low = encode_features(model, loader, torch.device("cpu"), progress=False, bfloat16=True).features
    assert low.dtype == torch.float32 and low.shape == exact.shape == (8, 1280)
    assert not torch.equal(low, exact)  # bfloat16 really ran
    cosine = torch.nn.functional.cosine_similarity(low, exact, dim=1)
    assert cosine.min() > 0.99


def test_native_bfloat16_follows_the_cpu_flags() -> None:
    flags = next((line for line in open("/proc/cpuinfo").read().splitlines() if line.startswith("flags")), "")
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))
    assert native_bfloat16(torch.device("cpu")) == (has_bf16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    for dtype, expected in (("float32", False), ("bfloat16", True)):
        trainer = Trainer(partial(torch.optim.AdamW), device="cpu", features={"dtype": dtype})
        assert trainer._features_in_bfloat16() is expected
    with pytest.raises(MedtlError, match="trainer.features.dtype='half' is unknown"):
        Trainer(partial(torch.optim.AdamW), device="cpu", features={"dtype": "half"})._features_in_bfloat16()


def test_predict_loader_takes_channels_last_inputs() -> None:
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=32, in_channels=3)
    seen = []
    original = model.forward
    model.forward = lambda x: (seen.append(x.is_contiguous(memory_format=torch.channels_last)), original(x))[1]  # type: ignore[method-assign]
    loader = [{"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 1]), "path": ["a", "b"]}]
    predict_loader(model, loader, torch.device("cpu"), progress=False, memory_format=torch.channels_last)
    assert seen == [True]
