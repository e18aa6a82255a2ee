"""The letterbox's resize, with the filter that suits its direction: area averaging to shrink, bilinear to enlarge.

Area averaging is the right filter for shrinking (every stored pixel counts once, nothing aliases), but used to
enlarge it replicates pixels: an image stored with fewer pixels than the model's input (another detector, an
archive's reduced copies, a public set's thumbnails) would reach the model as square blocks, and its noise as
square grain with hard edges that no training image had. Bilinear interpolation enlarges without those edges
(torchvision's and MONAI's default for images). :class:`medtl.data.acquisition.RandDetector` enlarges its coarse
images with :func:`enlarge`, so that training imitates what the letterbox does to such a site.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resize, Transform

__all__ = ["ENLARGE_MODE", "SHRINK_MODE", "ResizeLongest", "ResizeLongestd", "enlarge"]

SHRINK_MODE = "area"
ENLARGE_MODE = "bilinear"


def enlarge(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, C, *size)`` with ``size`` at least ``(h, w)``: bilinear, pixel centres aligned
    (``align_corners=False``), as :class:`ResizeLongest` enlarges."""
    return F.interpolate(images, size=list(size), mode=ENLARGE_MODE, align_corners=False)


class ResizeLongest(Transform):
    """``(C, H, W)`` -> ``(C, H', W')`` with ``max(H', W') = size`` and the aspect ratio kept.

    Shrinking averages areas (``area``); enlarging interpolates (``bilinear``, ``align_corners=False``)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._shrink = Resize(spatial_size=self.size, size_mode="longest", mode=SHRINK_MODE)
        self._enlarge = Resize(spatial_size=self.size, size_mode="longest", mode=ENLARGE_MODE, align_corners=False)

    def __call__(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        longest = max(image.shape[1:])
        return self._shrink(image) if longest >= self.size else self._enlarge(image)


class ResizeLongestd(MapTransform):
    """Dictionary wrapper of :class:`ResizeLongest`."""

    def __init__(self, keys: KeysCollection, size: int) -> None:
        super().__init__(keys)
        self.resize = ResizeLongest(size)

    def __call__(self, data: Mapping[Hashable, np.ndarray | torch.Tensor]) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.resize(out[key])
        return out
