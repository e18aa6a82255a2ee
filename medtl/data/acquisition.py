"""Training-time imitation of another detector: fewer pixels, and quantum noise at that resolution.

A site whose detector (or archive) stores fewer pixels reaches the model enlarged by the pipeline's letterbox,
and its noise arrives enlarged with it, as grain several input pixels wide. Noise added at the input's own
resolution (``data.augment.noise_std``) does not look like that; :class:`RandDetector` resamples the image to a
random fraction of its size (area average), adds ``noise * sqrt(x)`` there, and enlarges it back the way
:func:`medtl.data.transforms.deterministic_transforms` enlarges a small image (:func:`medtl.data.resize.enlarge`:
bilinear).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from medtl.data.resize import enlarge
from medtl.errors import MedtlError

__all__ = ["RandDetector", "RandDetectord"]


class RandDetector(RandomizableTransform):
    """``(C, H, W)`` image in [0, 1] -> the same shape as a detector with fewer pixels and more noise stores it.

    Args:
        prob: probability of applying it to an image.
        min_scale: the image is resampled to a side ``scale`` times its own, ``scale`` uniform in
            ``[min_scale, max_scale]`` (1: the input's resolution, no resampling).
        max_scale: upper end of that range.
        noise: quantum noise of standard deviation ``n * sqrt(x)`` at that resolution, ``n`` uniform in
            ``[0, noise]``; 0: none.
    """

    def __init__(self, prob: float = 0.5, min_scale: float = 0.5, max_scale: float = 1.0, noise: float = 0.0) -> None:
        RandomizableTransform.__init__(self, prob)
        if not 0.0 < min_scale <= max_scale <= 1.0:
            raise MedtlError(f"detector scales must satisfy 0 < min_scale <= max_scale <= 1, got min_scale="
                             f"{min_scale}, max_scale={max_scale}; set data.augment.detector_resolution in [0, 1)")
        if noise < 0:
            raise MedtlError(f"detector noise must be >= 0, got {noise}; set data.augment.detector_noise >= 0")
        self.min_scale, self.max_scale, self.noise = min_scale, max_scale, noise
        self._scale, self._noise_std, self._noise_seed = 1.0, 0.0, 0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self._scale = float(self.R.uniform(self.min_scale, self.max_scale))
        self._noise_std = float(self.R.uniform(0.0, self.noise))
        self._noise_seed = int(self.R.randint(2**31 - 1))

    def __call__(self, image: np.ndarray | torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        image = torch.as_tensor(image, dtype=torch.float32)
        if not self._do_transform:
            return image
        size = image.shape[1:]
        small_size = [max(1, round(side * self._scale)) for side in size]
        small = F.interpolate(image[None], size=small_size, mode="area")  # (1, C, h, w): fewer, averaged pixels
        if self._noise_std > 0:
            generator = torch.Generator().manual_seed(self._noise_seed)
            grain = torch.randn(small.shape, generator=generator)
            small = small + self._noise_std * small.clamp(min=0.0).sqrt() * grain
        return enlarge(small.clamp(0.0, 1.0), size)[0]  # (C, H, W), interpolated as the letterbox enlarges


class RandDetectord(RandomizableTransform, MapTransform):
    """Dictionary wrapper of :class:`RandDetector` (one draw per item, shared by its ``keys``)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.5, min_scale: float = 0.5, max_scale: float = 1.0,
                 noise: float = 0.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.detector = RandDetector(1.0, min_scale, max_scale, noise)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandDetectord:
        super().set_random_state(seed, state)
        self.detector.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, np.ndarray | torch.Tensor]) -> dict:
        out = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return out
        self.detector.randomize()
        for key in self.key_iterator(out):
            out[key] = self.detector(out[key], randomize=False)
        return out
