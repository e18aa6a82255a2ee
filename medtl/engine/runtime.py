"""Where and how tensors run: the device, the memory layout of a convolutional model, and whether the machine
computes bfloat16 natively. The settings are ``auto`` by default, so the machine chooses the fast path, not
the user; each choice here was measured (README, *Training speed*).
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from medtl.errors import MedtlError

__all__ = ["resolve_device", "memory_format_for", "in_memory_format", "current_memory_format", "to_memory_format", "native_bfloat16",
           "autocast", "MEMORY_FORMATS"]

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def memory_format_for(model: nn.Module, setting: str = "auto") -> torch.memory_format:
    """The layout ``model`` runs in: ``channels_last`` (``(B, H, W, C)`` in memory) for 2D convolutional models
    under ``auto``, else contiguous. oneDNN and cuDNN convolve channels-last without layout conversions: EfficientNet-
    Lite0's training step at 224 px, batch 32, on the 2-core CPU went from 10.2 to 13.3 images/s
    (``benchmarks/train_throughput.py``).
    Models with 3D convolutions (``(B, C, X, Y, Z)`` kernels) stay contiguous: channels-last-3D was not measured."""
    if setting not in MEMORY_FORMATS:
        raise MedtlError(f"trainer.memory_format='{setting}' is unknown; use one of {list(MEMORY_FORMATS)}")
    kernels = {p.dim() for p in model.parameters()}
    if setting == "channels_last" and 5 in kernels:
        raise MedtlError("trainer.memory_format=channels_last needs a 2D model; this one has 3D convolutions: "
                         "use trainer.memory_format=auto or contiguous")
    if setting == "contiguous" or 4 not in kernels or 5 in kernels:
        return torch.contiguous_format
    return torch.channels_last


_LAYOUT = "_medtl_memory_format"  # the layout in_memory_format put a model in (nested blocks leave it alone)


@contextmanager
def in_memory_format(model: nn.Module, memory_format: torch.memory_format) -> Iterator[nn.Module]:
    """``model`` with its 4D weights in ``memory_format`` inside the block, as it was afterwards (export, Grad-CAM
    and checkpoints see the usual contiguous layout). Nested blocks with the same layout change nothing."""
    before = current_memory_format(model)
    if memory_format == before:
        yield model
        return
    model.to(memory_format=memory_format)
    setattr(model, _LAYOUT, memory_format)
    try:
        yield model
    finally:
        model.to(memory_format=before)
        setattr(model, _LAYOUT, before)


def current_memory_format(model: nn.Module) -> torch.memory_format:
    """The layout :func:`in_memory_format` has ``model`` in (contiguous outside any such block)."""
    return getattr(model, _LAYOUT, torch.contiguous_format)


def to_memory_format(images: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A batch ``(B, C, H, W)`` in ``memory_format`` (other ranks unchanged)."""
    if memory_format == torch.contiguous_format or images.dim() != 4:
        return images
    return images.contiguous(memory_format=memory_format)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: CUDA with bf16 support, or a CPU with bfloat16 dot-product
    instructions (``avx512_bf16``: AMD Zen 4 and later, Intel Cooper Lake) or AMX tiles (``amx_bf16``: Intel
    Sapphire Rapids and later), where oneDNN's bfloat16 convolutions are fast; emulated bfloat16 elsewhere is not.
    It decides ``trainer.features.dtype=auto`` (the frozen encoder's features: 2.0x faster on the AMD EPYC with
    avx512_bf16, README *Training speed*)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(_cpu_bfloat16_flags()) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpu_bfloat16_flags() -> tuple[str, ...]:
    """The bfloat16 instruction flags of this CPU (``/proc/cpuinfo``; none where it cannot be read)."""
    cpuinfo = Path("/proc/cpuinfo")
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return ()
    return tuple(flag for flag in CPU_BFLOAT16_FLAGS if flag in flags.split())


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision on ``device``: bfloat16 where supported (CPU, recent CUDA), else float16."""
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)
