"""MRI volumes: NIfTI files and DICOM series as ``(1, X, Y, Z)`` inputs in RAS at a fixed spacing.

Layout through the pipeline: path -> ``(1, X, Y, Z)`` float32 in stored units, RAS -> smoothed to the coarser
grid's resolution (anti-aliasing) -> resampled to ``spacing`` mm on an axis-aligned grid (an oblique acquisition
is resampled square) -> robust intensity scaling to [0, 1] (the background level and a high percentile of the
voxels above it map to 0 and 1: any increasing affine change of units, raw scanner values, uint8 exports,
z-scores, gives the same input, whatever the field of view) -> ``(1, *shape)`` cropped on the head (centred in X
and Y, from the vertex down in Z) -> (training) L-R flip, small rotations and scaling, bias field, gamma, noise,
blur, simulated thick slices -> the encoder's normalisation.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Spacingd,
    Transform,
)

from medtl.data.inventory import Inventory
from medtl.data.pipelines.base import ImagePipeline, demo_spec, register_pipeline
from medtl.data.readers import DEFAULT_MAX_PIXELS
from medtl.data.transforms import normalise_for
from medtl.data.volume_inputs import scan_volume_folder
from medtl.data.volume_transforms import AntiAliasd, CropAroundForegroundd, RandThickSlicesd, RobustScaleIntensityd
from medtl.data.volumes import LoadVolume, LoadVolumed
from medtl.errors import MedtlError
from medtl.models.registry import WeightsInfo

if TYPE_CHECKING:
    from medtl.data.check import ImageFacts

__all__ = ["VolumePipeline", "VolumeAugmentConfig", "volume_facts"]

IMAGE = "image"
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


@dataclass(frozen=True)
class VolumeAugmentConfig:
    """Training-time 3D augmentation; ``prob=0`` turns it off. Flips are left-right only (anatomy allows it)."""

    prob: float = 0.8
    flip_lr: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    bias_field: float = 0.3     # coefficient range of MONAI's bias field
    gamma: float = 0.3          # gamma drawn from [1 / (1 + g), 1 + g]
    noise_std: float = 0.02
    thick_slices: float = 0.25  # probability of a simulated thick-slice acquisition
    blur: float = 0.0           # probability of a blur of 0.25 to 1 voxel per axis (a smoother, lower-resolution scan)


@register_pipeline("volume")
class VolumePipeline(ImagePipeline):
    """A volume pipeline (see the module docstring).

    Args:
        spacing: voxel spacing in mm after resampling, ``(X, Y, Z)``.
        shape: input shape in voxels ``(X, Y, Z)``: ``shape * spacing`` mm of the head.
        lower_percentile, upper_percentile: the intensity window of the robust scaling.
        foreground: the scaled intensity above which a voxel is the head (for the crop).
        anti_alias: smooth a finer volume before resampling it to ``spacing`` (:class:`AntiAlias`), so a thin-slice
            scan does not keep a texture that thick-slice and smoother scans lack.
    """

    spatial_dims = 3
    cache_version = 2  # 2: anti-aliasing before resampling; the whole deterministic chain cached

    def __init__(self, spacing: tuple[float, float, float] = (3.0, 3.0, 3.0), shape: tuple[int, int, int] = (64, 64, 56),
                 lower_percentile: float = 0.5, upper_percentile: float = 99.5, foreground: float = 0.1,
                 augment: dict | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, anti_alias: bool = True) -> None:
        self.spacing = tuple(float(s) for s in spacing)
        self.shape = tuple(int(s) for s in shape)
        if len(self.spacing) != 3 or len(self.shape) != 3 or min(self.spacing) <= 0 or min(self.shape) < 8:
            raise MedtlError(f"data.pipeline: spacing={list(spacing)} and shape={list(shape)} must be three positive "
                             "numbers each (mm, and at least 8 voxels)")
        self.lower_percentile, self.upper_percentile = float(lower_percentile), float(upper_percentile)
        self.foreground = float(foreground)
        self.augment = VolumeAugmentConfig(**dict(augment or {}))
        self.max_pixels = int(max_pixels)
        self.anti_alias = bool(anti_alias)
        self._reader: LoadVolume | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.shape

    def deterministic(self) -> list:
        """File -> ``(1, *shape)`` in [0, 1]."""
        return [
            LoadVolumed(IMAGE, axcodes="RAS", max_pixels=self.max_pixels),
            _SingleChannel(),
            *([AntiAliasd(IMAGE, self.spacing)] if self.anti_alias else []),
            Spacingd(IMAGE, pixdim=self.spacing, mode="bilinear", diagonal=True),
            EnsureTyped(IMAGE, dtype=torch.float32, track_meta=False),
            RobustScaleIntensityd(IMAGE, lower=self.lower_percentile, upper=self.upper_percentile),
            CropAroundForegroundd(IMAGE, self.shape, threshold=self.foreground),
        ]

    def random_part(self) -> list:
        aug = self.augment
        rotate = np.deg2rad(aug.rotate_deg)
        return [
            *([RandFlipd(IMAGE, prob=0.5 * min(1.0, aug.prob / 0.8), spatial_axis=0)] if aug.flip_lr else []),
            RandAffined(IMAGE, prob=aug.prob, rotate_range=(rotate, rotate, rotate), scale_range=aug.scale,
                        padding_mode="zeros", mode="bilinear"),
            RandBiasFieldd(IMAGE, prob=aug.prob * 0.5, coeff_range=(0.0, aug.bias_field)),
            RandAdjustContrastd(IMAGE, prob=aug.prob * 0.5, gamma=(1.0 / (1.0 + aug.gamma), 1.0 + aug.gamma)),
            RandGaussianSmoothd(IMAGE, prob=aug.blur, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0)),
            RandGaussianNoised(IMAGE, prob=aug.prob, std=aug.noise_std),
            RandThickSlicesd(IMAGE, prob=aug.thick_slices),
        ]

    def train_transforms(self, weights: WeightsInfo, storage_dtype: type = np.float32) -> Compose:
        return Compose([*self.deterministic(), EnsureTyped(IMAGE, dtype=storage_dtype, track_meta=False),
                        EnsureTyped(IMAGE, dtype=np.float32, track_meta=False), *self.random_part(),
                        normalise_for(weights), EnsureTyped(IMAGE, dtype=np.float32, track_meta=False)])

    def eval_transforms(self, weights: WeightsInfo, storage_dtype: type = np.float32) -> Compose:
        return Compose([*self.deterministic(), normalise_for(weights),
                        EnsureTyped(IMAGE, dtype=storage_dtype, track_meta=False)])

    def scan_folder(self, folder: Path, root: Path | None = None, allow_outside_root: bool = True) -> Inventory:
        return scan_volume_folder(folder, root, allow_outside_root)

    def inspect(self, path: str) -> ImageFacts:
        if self._reader is None:
            self._reader = LoadVolume(axcodes="RAS", max_pixels=self.max_pixels)
        return volume_facts(path, self._reader)

    def tta_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, X, Y, Z)``: as it is and flipped left-right (X in RAS)."""
        return [images, torch.flip(images, dims=[2])]

    def site_signature(self, severity: str) -> str:
        from dataclasses import asdict

        from medtl.data.volume_shift import volume_site

        return json.dumps(asdict(volume_site(severity)), default=str)

    def write_site(self, frame: Any, folder: Path, severity: str, seed: int) -> Any:
        """The volume site ``severity`` of :data:`medtl.data.volume_shift.VOLUME_SITES` (thick-slice DICOM series,
        thin z-scored, oblique uint8, 12-bit raw)."""
        from medtl.data.volume_shift import volume_site, write_site_volumes

        return write_site_volumes(frame, folder, volume_site(severity), seed)

    def demo(self, demo_dir: str, spec: dict[str, Any]) -> Path:
        """Synthetic T1 and FLAIR brain phantoms as NIfTI (:mod:`medtl.data.demo_volumes`)."""
        from medtl.data.demo_volumes import VolumeDemoSpec, ensure_demo_mri_volumes

        return ensure_demo_mri_volumes(demo_dir, demo_spec(VolumeDemoSpec, spec))


def volume_facts(path: str, reader: LoadVolume) -> ImageFacts:
    """Label-free facts of a volume as stored: shape, spacing, orientation, intensity range and percentiles.

    These are what a shortcut probe must see: a set whose classes come at different shapes or spacings lets a
    model learn the scanner protocol instead of the image content.
    """
    from medtl.data.check import ImageFacts, _difference_hash, _unit_range

    try:
        volume = reader(path)  # (C, X, Y, Z) in RAS
    except MedtlError as exc:
        return ImageFacts(path, readable=False, reason=str(exc))
    array = np.asarray(volume, dtype=np.float32)[0]
    stored_shape, spacing, codes = _stored_geometry(volume)
    unit = _unit_range(array)
    middle = unit[:, :, unit.shape[2] // 2].T[::-1]  # the axial slice through the middle, as a viewer shows it
    features = {**{f"shape_{a}": float(n) for a, n in zip("xyz", stored_shape)},
                **{f"spacing_{a}": float(s) for a, s in zip("xyz", spacing)},
                "voxels": float(np.prod(stored_shape)), "extent_z_mm": float(stored_shape[2] * spacing[2]),
                "intensity_min": float(array.min()), "intensity_max": float(array.max()),
                "integer_valued": float(np.allclose(array, np.round(array))),
                "background_fraction": float((unit < 0.05).mean())}
    features.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(unit, PERCENTILES))})
    return ImageFacts(path, readable=True, height=int(array.shape[1]), width=int(array.shape[0]),
                      pixel_hash=hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(),
                      dhash=_difference_hash(np.ascontiguousarray(middle)), features=features,
                      tags={"orientation": "".join(codes), "shape": "x".join(map(str, stored_shape))})


def _stored_geometry(volume: Any) -> tuple[tuple[int, ...], tuple[float, ...], tuple[str, ...]]:
    """The shape, spacing and axis codes of the volume as the file stored it (before reorientation)."""
    meta = getattr(volume, "meta", {})
    original = np.asarray(meta.get("original_affine", np.eye(4)), dtype=float)
    spacing = tuple(float(s) for s in np.sqrt((original[:3, :3] ** 2).sum(axis=0)))
    codes = nib.orientations.aff2axcodes(original)
    shape = tuple(int(n) for n in meta.get("spatial_shape", volume.shape[1:]))
    return shape, spacing, tuple(str(c) for c in codes)


class _SingleChannel(Transform):
    """Volumes must be 3D with one channel (one contrast, one time point): say so instead of mixing them.

    A MONAI ``Transform``: MONAI's caches (memory and disk) cache a chain only up to the first step that is random
    or is not a ``Transform``. A plain class here once cut the disk cache short after reading, so the cached
    volume lost its affine and was resampled as if its voxels were 1 mm.
    """

    def __call__(self, data: dict) -> dict:
        if data[IMAGE].ndim != 4:  # (C, X, Y) from a 2D file or a one-slice series
            raise MedtlError(f"{data.get('path', '')} is a single 2D image, not a volume; use data/pipeline="
                             "radiograph for 2D images, or supply the whole series")
        channels = data[IMAGE].shape[0]
        if channels != 1:
            raise MedtlError(f"volume {data.get('path', '')} has {channels} channels (a 4D file); the volume pipeline "
                             "reads one contrast per file: split it, or list each volume on its own")
        return data

