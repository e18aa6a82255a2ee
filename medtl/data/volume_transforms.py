"""Volume transforms that MONAI does not ship: simulated thick-slice acquisition, a fixed-size crop on the head,
intensity scaling by percentiles of the foreground, anti-aliasing before resampling to a coarser grid.

Layout: ``(C, X, Y, Z)`` in, the same shape out.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.networks.layers import gaussian_1d, separable_filtering
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type

__all__ = ["RandThickSlices", "RandThickSlicesd", "CropAroundForeground", "CropAroundForegroundd",
           "RobustScaleIntensity", "RobustScaleIntensityd", "AntiAlias", "AntiAliasd"]


class RandThickSlices(RandomizableTransform):
    """With probability ``prob``, average ``factor`` neighbouring slices along one spatial axis (a thick-slice 2D
    acquisition's partial-volume effect) and stretch them back to the original count (nearest neighbour).

    Args:
        factors: slice-thickness factors to draw from (``3`` turns 2 mm slices into 6 mm ones).
        axes: spatial axes (0 = X, 1 = Y, 2 = Z) the slices may lie across.
    """

    def __init__(self, prob: float = 0.25, factors: tuple[int, ...] = (2, 3, 4), axes: tuple[int, ...] = (0, 1, 2)) -> None:
        super().__init__(prob)
        self.factors, self.axes = tuple(factors), tuple(axes)
        self._factor, self._axis = 1, 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._factor = int(self.R.choice(self.factors))
        self._axis = int(self.R.choice(self.axes))

    def __call__(self, volume: Any, randomize: bool = True) -> Any:
        if randomize:
            self.randomize()
        if not self._do_transform or self._factor < 2:
            return volume
        tensor = torch.as_tensor(volume)
        dim = 1 + self._axis  # skip the channel axis
        size = tensor.shape[dim]
        moved = tensor.movedim(dim, -1)  # (C, ..., n)
        pooled = torch.nn.functional.avg_pool1d(moved.reshape(-1, 1, size), self._factor, ceil_mode=True,
                                                count_include_pad=False)  # (C*..., 1, ceil(n / f))
        index = torch.clamp(torch.arange(size) // self._factor, max=pooled.shape[-1] - 1)
        thick = pooled[..., index].reshape(moved.shape).movedim(-1, dim)  # back to (C, X, Y, Z)
        return thick.numpy() if isinstance(volume, np.ndarray) else thick


class RandThickSlicesd(RandomizableTransform, MapTransform):
    """Dictionary wrapper of :class:`RandThickSlices` (one draw for all keys)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.25, factors: tuple[int, ...] = (2, 3, 4),
                 axes: tuple[int, ...] = (0, 1, 2)) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, 1.0)
        self.transform = RandThickSlices(prob, factors, axes)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandThickSlicesd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        self.transform.randomize()
        for key in self.key_iterator(out):
            out[key] = self.transform(out[key], randomize=False)
        return out


class CropAroundForeground(Transform):
    """Crop (and zero-pad) a volume to a fixed ``shape`` placed on its foreground: centred along X and Y, and
    along Z from the top of the foreground down (a head's vertex, whatever the scan covers below it).

    The foreground box comes from slice profiles (the share of voxels above ``threshold`` per slice along
    each axis, kept where it reaches ``min_share`` of its peak), so isolated noisy voxels do not widen it.
    Layout ``(C, X, Y, Z)`` in [0, 1] (after intensity scaling) -> ``(C, *shape)``.
    """

    def __init__(self, shape: tuple[int, int, int], threshold: float = 0.1, min_share: float = 0.05,
                 anchor_top: bool = True) -> None:
        self.shape, self.threshold, self.min_share, self.anchor_top = tuple(shape), threshold, min_share, anchor_top

    def __call__(self, volume: Any) -> torch.Tensor:
        tensor = torch.as_tensor(volume)
        mask = (tensor > self.threshold).any(dim=0)  # (X, Y, Z)
        out = torch.zeros((tensor.shape[0], *self.shape), dtype=tensor.dtype)
        source, target = [], []
        for axis in range(3):
            low, high = self._extent(mask, axis)
            size, want = tensor.shape[1 + axis], self.shape[axis]
            top = axis == 2 and self.anchor_top
            start = high - want if top else (low + high - want) // 2  # in source coordinates, may be < 0
            src_from, src_to = max(start, 0), min(start + want, size)
            source.append(slice(src_from, src_to))
            target.append(slice(src_from - start, src_to - start))
        out[(slice(None), *target)] = tensor[(slice(None), *source)]
        return out

    def _extent(self, mask: torch.Tensor, axis: int) -> tuple[int, int]:
        """``[low, high)`` of the foreground along ``axis``; the whole axis when nothing is above threshold."""
        others = tuple(a for a in range(3) if a != axis)
        profile = mask.float().mean(dim=others)  # (n,)
        keep = torch.nonzero(profile >= self.min_share * profile.max()).flatten() if profile.max() > 0 else None
        if keep is None or len(keep) == 0:
            return 0, mask.shape[axis]
        return int(keep[0]), int(keep[-1]) + 1


class CropAroundForegroundd(MapTransform):
    """Dictionary wrapper of :class:`CropAroundForeground`."""

    def __init__(self, keys: KeysCollection, shape: tuple[int, int, int], threshold: float = 0.1,
                 min_share: float = 0.05, anchor_top: bool = True) -> None:
        super().__init__(keys)
        self.transform = CropAroundForeground(shape, threshold, min_share, anchor_top)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.transform(out[key])
        return out


class RobustScaleIntensity(Transform):
    """Scale intensities to [0, 1] by percentiles that do not depend on the field of view or the units.

    ``low`` is the ``lower`` percentile of the whole volume (the background level, even where the background is a
    negative constant, as in a z-scored volume); ``high`` is the ``upper`` percentile of the voxels above that level
    only, so neither padding nor a larger field of view of empty air moves it. Any increasing affine change of
    units (raw scanner values, a uint8 export, z-scores) then gives the same output. ``(C, ...)`` in and out.
    """

    def __init__(self, lower: float = 0.5, upper: float = 99.5) -> None:
        self.lower, self.upper = lower, upper

    def __call__(self, volume: Any) -> Any:
        values = torch.as_tensor(volume, dtype=torch.float32)
        flat = values.flatten()
        low = torch.quantile(_sample(flat), self.lower / 100.0)
        above = flat[flat > low + 1e-6 * (flat.max() - low).clamp(min=1e-12)]
        high = torch.quantile(_sample(above), self.upper / 100.0) if above.numel() else flat.max()
        scaled = ((values - low) / (high - low).clamp(min=1e-12)).clamp(0.0, 1.0)
        return volume.new_tensor(scaled) if hasattr(volume, "meta") else scaled


def _sample(values: torch.Tensor, limit: int = 2_000_000) -> torch.Tensor:
    """``torch.quantile`` takes at most 16M values; a regular subsample of a larger volume is as good."""
    step = max(1, values.numel() // limit)
    return values[::step]


class RobustScaleIntensityd(MapTransform):
    """Dictionary wrapper of :class:`RobustScaleIntensity`."""

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5) -> None:
        super().__init__(keys)
        self.transform = RobustScaleIntensity(lower, upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.transform(out[key])
        return out


class AntiAlias(Transform):
    """Gaussian smoothing that band-limits a volume to the grid it is about to be resampled to.

    Along each axis whose voxel spacing (from the ``MetaTensor``'s affine) is finer than ``spacing``, the volume is
    smoothed with ``sigma = (spacing / voxel spacing - 1) / 2`` voxels, as scikit-image's ``rescale`` does before
    downsampling. Without it, resampling a 1 mm scan to 3 mm keeps its fine-grained noise (aliased) while a
    thick-slice or already smooth scan has none: texture then says which scanner a volume came from, and a model
    can learn that instead of the anatomy. Axes already at or coarser than ``spacing`` are left as they are.
    Layout ``(C, X, Y, Z)`` in and out (affine unchanged).
    """

    def __init__(self, spacing: tuple[float, float, float]) -> None:
        self.spacing = tuple(float(s) for s in spacing)

    def sigmas(self, voxel_spacing: tuple[float, ...]) -> tuple[float, ...]:
        """Smoothing per axis in voxels (0 where the volume is already at least as coarse)."""
        return tuple(max(0.0, (want / max(have, 1e-6) - 1.0) / 2.0) for want, have in zip(self.spacing, voxel_spacing))

    def __call__(self, volume: Any) -> Any:
        affine = np.asarray(getattr(volume, "affine", np.eye(4)), dtype=float)
        sigmas = self.sigmas(tuple(np.sqrt((affine[:3, :3] ** 2).sum(axis=0))))
        if max(sigmas) < 0.1:  # under a tenth of a voxel: nothing to remove
            return volume
        # Edges replicated: zero padding would brighten the border of a volume whose background is not 0 (a z-scored
        # volume stores it as a negative number). The kernels are MONAI's GaussianFilter's (erf, 4 sigma).
        kernels = [gaussian_1d(torch.tensor(max(s, 1e-3)), truncated=4.0, approx="erf") for s in sigmas]
        tensor = torch.as_tensor(volume, dtype=torch.float32).as_subclass(torch.Tensor)  # (C, X, Y, Z)
        smoothed = separable_filtering(tensor[None], kernels, mode="replicate")[0]  # (C, X, Y, Z)
        return convert_to_dst_type(smoothed, dst=volume)[0]


class AntiAliasd(MapTransform):
    """Dictionary wrapper of :class:`AntiAlias`."""

    def __init__(self, keys: KeysCollection, spacing: tuple[float, float, float]) -> None:
        super().__init__(keys)
        self.transform = AntiAlias(spacing)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.transform(out[key])
        return out
