"""MONAI dictionary-transform pipelines for 2D radiographs.

Layout through the pipeline: file path -> ``(1, H, W)`` float32 in stored units -> ``(1, H, W)``
in [0, 1] (percentile window) -> ``(1, S, S)`` letterboxed -> augmented (training only) ->
normalised with the encoder's own mean/std. The deterministic part comes first so that
``CacheDataset`` caches decoded, resized images and only augmentation runs each epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from monai.transforms import (
    Compose,
    EnsureTyped,
    HistogramNormalized,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    Resized,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
    ThresholdIntensityd,
)

from medtl.data.readers import DEFAULT_MAX_PIXELS, DicomOptions, LoadRadiographd
from medtl.models.registry import WeightsInfo

__all__ = ["IntensityConfig", "AugmentConfig", "deterministic_transforms", "train_transforms", "eval_transforms"]

IMAGE = "image"


@dataclass(frozen=True)
class IntensityConfig:
    """Per-image intensity window: the given percentiles map to 0 and 1, values outside are clipped.

    ``equalize``: then histogram-equalise each image (after resizing, before the letterbox padding), so that any
    monotone change of the grey levels (exposure, contrast curve, display window) gives the same input. It erases
    the processing fingerprint of a site or collection; it does not undo blur, noise or clipping."""

    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    equalize: bool = False


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; ``prob=0`` turns it off.

    ``gamma``, ``blur`` and ``clip_highlights`` imitate another site's acquisition and processing (off at 0): a
    contrast curve ``x ** gamma`` with gamma in ``[1 / (1 + gamma), 1 + gamma]``; a Gaussian blur of up to
    ``blur`` pixels at the training size; a narrower display window that saturates the densest parts,
    ``min(1, x * (1 + c))`` with ``c`` up to ``clip_highlights`` (the top ``c / (1 + c)`` of the range turns
    white). Each is applied with probability ``prob`` before the affine move and the noise."""

    prob: float = 0.8
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    noise_std: float = 0.02
    gamma: float = 0.0
    blur: float = 0.0
    clip_highlights: float = 0.0


def deterministic_transforms(image_size: int, intensity: IntensityConfig,
                             dicom: DicomOptions = DicomOptions(), max_pixels: int = DEFAULT_MAX_PIXELS) -> list:
    """Load, window to [0, 1] (and equalise, when set) and letterbox to ``(1, image_size, image_size)`` keeping the
    aspect ratio. Files declaring more than ``max_pixels`` are refused before decoding."""
    equalize = [HistogramNormalized(IMAGE, num_bins=256, min=0, max=1)] if intensity.equalize else []
    return [
        LoadRadiographd(keys=IMAGE, dicom=dicom, max_pixels=max_pixels),
        ScaleIntensityRangePercentilesd(IMAGE, lower=intensity.lower_percentile, upper=intensity.upper_percentile,
                                        b_min=0.0, b_max=1.0, clip=True),
        Resized(IMAGE, spatial_size=image_size, size_mode="longest", mode="area"),  # (1, S, <=S) or (1, <=S, S)
        *equalize,
        SpatialPadd(IMAGE, spatial_size=(image_size, image_size)),
        EnsureTyped(IMAGE, dtype=np.float32, track_meta=False),
    ]


def train_transforms(image_size: int, weights: WeightsInfo, intensity: IntensityConfig,
                     augment: AugmentConfig, dicom: DicomOptions = DicomOptions(),
                     storage_dtype: type = np.float32, max_pixels: int = DEFAULT_MAX_PIXELS) -> Compose:
    """Deterministic part (its output stored as ``storage_dtype``), random affine and noise, normalisation."""
    image_size_px = float(image_size)
    random_part = [
        EnsureTyped(IMAGE, dtype=np.float32, track_meta=False),
        *_acquisition_augment(augment),
        RandAffined(IMAGE, prob=augment.prob, rotate_range=np.deg2rad(augment.rotate_deg),
                    scale_range=augment.scale, translate_range=augment.translate * image_size_px,
                    padding_mode="zeros", mode="bilinear"),
        RandGaussianNoised(IMAGE, prob=augment.prob, std=augment.noise_std),
    ]
    return Compose([*deterministic_transforms(image_size, intensity, dicom, max_pixels), _store_as(storage_dtype),
                    *random_part,
                    normalise_for(weights), EnsureTyped(IMAGE, dtype=np.float32, track_meta=False)])


def _acquisition_augment(augment: AugmentConfig) -> list:
    """Contrast curve, blur and highlight clipping on the ``(1, S, S)`` image in [0, 1], when configured."""
    steps: list = []
    if augment.clip_highlights > 0:
        steps += [RandScaleIntensityd(IMAGE, factors=(0.0, augment.clip_highlights), prob=augment.prob),
                  ThresholdIntensityd(IMAGE, threshold=1.0, above=False, cval=1.0)]  # values above 1 -> 1
    if augment.gamma > 0:
        steps.append(RandAdjustContrastd(IMAGE, prob=augment.prob, gamma=(1.0 / (1.0 + augment.gamma),
                                                                          1.0 + augment.gamma)))
    if augment.blur > 0:
        sigma = (min(0.25, augment.blur), augment.blur)
        steps.append(RandGaussianSmoothd(IMAGE, prob=augment.prob, sigma_x=sigma, sigma_y=sigma))
    return steps


def eval_transforms(image_size: int, weights: WeightsInfo, intensity: IntensityConfig,
                    dicom: DicomOptions = DicomOptions(), storage_dtype: type = np.float32,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Compose:
    """Deterministic part, then the encoder's normalisation; the result is ``storage_dtype``."""
    return Compose([*deterministic_transforms(image_size, intensity, dicom, max_pixels), normalise_for(weights),
                    _store_as(storage_dtype)])


def _store_as(dtype: type) -> EnsureTyped:
    """What a cache keeps: float16 halves a disk cache; models get float32 (the loop casts)."""
    return EnsureTyped(IMAGE, dtype=dtype, track_meta=False)


def normalise_for(weights: WeightsInfo) -> NormalizeIntensityd:
    """The encoder's input normalisation for one grey channel."""
    # Grey input: the encoder's first convolution was collapsed to one channel, so one mean/std.
    return NormalizeIntensityd(IMAGE, subtrahend=float(np.mean(weights.mean)), divisor=float(np.mean(weights.std)))
