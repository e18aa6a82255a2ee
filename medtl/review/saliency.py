"""Where the model looks: Grad-CAM (MONAI's ``GradCAM``) on the encoder's last convolutional stage.

The layer is a property of the encoder (:meth:`medtl.models.registry.Encoder.gradcam_layer`), so no one names
it by hand. Gradients are switched on for the duration (and restored after), so frozen linear-probe encoders
are explained too. A 2.5D encoder (:class:`~medtl.models.slices.SliceEncoder`) runs its 2D layer on a stack of
slices, which MONAI's ``GradCAM`` cannot map back to the volume: each slice gets its own map from the gradient
of the volume's score (through the pooling, so attention weights count), and the maps are put back at their
slices and interpolated between them.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from monai.visualize import GradCAM

from medtl.models.classifier import TransferModel
from medtl.models.slices import SliceEncoder

__all__ = ["gradcam_maps", "gradcam_target_layer"]


def gradcam_target_layer(model: TransferModel) -> str:
    """The dotted name of the Grad-CAM layer within ``model`` (``encoder.net._conv_head`` for Lite0)."""
    return f"encoder.{model.encoder.gradcam_layer()}"


def gradcam_maps(model: TransferModel, images: torch.Tensor, class_index: int | list[int]) -> np.ndarray:
    """Grad-CAM maps of ``images`` ``(N, C, H, W)`` or volumes ``(N, C, X, Y, Z)`` (normalised model input) for
    ``class_index`` (one class for all, or one per image): ``(N, H, W)`` or ``(N, X, Y, Z)`` in [0, 1], at the
    input size, 1 where the evidence is strongest."""
    model = model.eval().cpu()
    if isinstance(model.encoder, SliceEncoder):
        return _slice_gradcam_maps(model, images, class_index)
    # MONAI's default post-processing maps (min, max) to (1, 0), flipping the map: scale max to 1 instead.
    cam = GradCAM(nn_module=model, target_layers=gradcam_target_layer(model), postprocessing=_unit_scale)
    classes = [class_index] * len(images) if isinstance(class_index, int) else list(class_index)
    maps = []
    with _gradients_on(model):
        for index, image in zip(classes, images.float()):
            maps.append(cam(image[None], class_idx=int(index))[0, 0].detach().cpu().numpy())  # (1, 1, H, W) -> (H, W)
    return np.stack(maps) if maps else np.zeros((0, *images.shape[-2:]), dtype=np.float32)


def _slice_gradcam_maps(model: TransferModel, volumes: torch.Tensor, class_index: int | list[int]) -> np.ndarray:
    """Grad-CAM of a 2.5D model: ``(N, C, X, Y, Z)`` -> ``(N, X, Y, Z)`` in [0, 1] (see the module docstring)."""
    encoder: SliceEncoder = model.encoder
    layer = dict(model.named_modules())[gradcam_target_layer(model)]
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured["activations"] = output
        output.register_hook(lambda grad: captured.__setitem__("gradients", grad))

    classes = [class_index] * len(volumes) if isinstance(class_index, int) else list(class_index)
    handle = layer.register_forward_hook(keep)
    maps = []
    try:
        with _gradients_on(model):
            for index, volume in zip(classes, volumes.float()):
                model.zero_grad(set_to_none=True)
                model(volume[None])[0, int(index)].backward()
                activations, gradients = captured["activations"], captured["gradients"]  # (count, K, h, w)
                weights = gradients.mean(dim=(2, 3), keepdim=True)  # (count, K, 1, 1)
                cams = torch.relu((weights * activations).sum(dim=1)).detach()  # (count, h, w)
                maps.append(_slices_to_volume(cams, encoder, tuple(volume.shape[1:])))
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return np.stack(maps) if maps else np.zeros((0, *volumes.shape[2:]), dtype=np.float32)


def _slices_to_volume(cams: torch.Tensor, encoder: SliceEncoder, shape: tuple[int, int, int]) -> np.ndarray:
    """Per-slice maps ``(count, h, w)`` -> ``(X, Y, Z)`` in [0, 1]: each upsampled to its slice ``(H, W)``, placed at
    its position along the encoder's axis, and linearly interpolated between positions (they span the whole axis)."""
    axis = encoder.config.axis
    n = shape[axis]
    plane = tuple(size for a, size in enumerate(shape) if a != axis)  # (H, W): the slice, as SliceEncoder cuts it
    values = torch.nn.functional.interpolate(cams[:, None], size=plane, mode="bilinear", align_corners=False)[:, 0]
    positions = encoder.slice_index(n).float().numpy()  # (count,), from 0 to n - 1
    fraction = np.interp(np.arange(n), positions, np.arange(len(positions)))  # (n,): where each slice falls
    below = np.floor(fraction).astype(int)
    above = np.minimum(below + 1, len(positions) - 1)
    share = torch.from_numpy(fraction - below).float()[:, None, None]  # (n, 1, 1)
    stack = (1 - share) * values[below] + share * values[above]  # (n, H, W)
    volume = stack.movedim(0, axis)  # (X, Y, Z)
    return _unit_scale(volume[None, None])[0, 0].numpy()


def _unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``(B, 1, H, W)`` or ``(B, 1, X, Y, Z)`` scaled to [0, 1] as a whole, its strongest evidence at 1
    (a volume's slices share one scale, so the most salient slice is the one with most evidence); an all-zero map
    stays 0."""
    every = tuple(range(1, maps.ndim))
    low = maps.amin(dim=every, keepdim=True)
    span = maps.amax(dim=every, keepdim=True) - low
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
