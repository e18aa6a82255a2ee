"""Where the model looks: Grad-CAM (MONAI's ``GradCAM``) on the encoder's last convolutional stage.

The layer is a property of the encoder (:meth:`medtl.models.registry.Encoder.gradcam_layer`), so no one names
it by hand. Gradients are switched on for the duration (and restored after), so frozen linear-probe encoders
are explained too.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from monai.visualize import GradCAM

from medtl.models.classifier import TransferModel

__all__ = ["gradcam_maps", "gradcam_target_layer"]


def gradcam_target_layer(model: TransferModel) -> str:
    """The dotted name of the Grad-CAM layer within ``model`` (``encoder.net._conv_head`` for Lite0)."""
    return f"encoder.{model.encoder.gradcam_layer()}"


def gradcam_maps(model: TransferModel, images: torch.Tensor, class_index: int | list[int]) -> np.ndarray:
    """Grad-CAM maps of ``images`` ``(N, C, H, W)`` (normalised model input) for ``class_index`` (one class for all,
    or one per image): ``(N, H, W)`` in [0, 1], upsampled to the input size, 1 where the evidence is strongest."""
    model = model.eval().cpu()
    # MONAI's default post-processing maps (min, max) to (1, 0), flipping the map: scale max to 1 instead.
    cam = GradCAM(nn_module=model, target_layers=gradcam_target_layer(model), postprocessing=_unit_scale)
    classes = [class_index] * len(images) if isinstance(class_index, int) else list(class_index)
    maps = []
    with _gradients_on(model):
        for index, image in zip(classes, images.float()):
            maps.append(cam(image[None], class_idx=int(index))[0, 0].detach().cpu().numpy())  # (1, 1, H, W) -> (H, W)
    return np.stack(maps) if maps else np.zeros((0, *images.shape[-2:]), dtype=np.float32)


def _unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``(B, 1, H, W)`` scaled to [0, 1] with its strongest evidence at 1; an all-zero map stays 0."""
    low = maps.amin(dim=(1, 2, 3), keepdim=True)
    span = maps.amax(dim=(1, 2, 3), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))


@contextmanager
def _gradients_on(model: torch.nn.Module) -> Iterator[None]:
    """Every parameter requires grad inside the block (Grad-CAM needs the layer's gradient); restored after."""
    before = [p.requires_grad for p in model.parameters()]
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for parameter, flag in zip(model.parameters(), before):
            parameter.requires_grad_(flag)
