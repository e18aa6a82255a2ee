"""MONAI dictionary-transform pipelines for 2D radiographs.

Layout through the pipeline: file path -> ``(1, H, W)`` float32 in stored units -> ``(1, H, W)``
in [0, 1] (percentile window) -> ``(1, S, S)`` letterboxed -> augmented (training only) ->
normalised with the encoder's own mean/std. The deterministic part comes first so that
``CacheDataset`` caches decoded, resized images and only augmentation runs each epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    HistogramNormalized,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
    ThresholdIntensityd,
)

from medtl.data.acquisition import RandDetectord
from medtl.data.counterfactual import RandCounterfactualHistogramd
from medtl.data.readers import DEFAULT_MAX_PIXELS, DicomOptions, LoadRadiographd
from medtl.data.resize import ResizeLongestd
from medtl.data.site_batches import SiteBatches
from medtl.models.registry import WeightsInfo

__all__ = ["IntensityConfig", "CropConfig", "AugmentConfig", "deterministic_transforms", "train_transforms",
           "eval_transforms", "batch_augmentation", "normalisation_of"]

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
class CropConfig:
    """What part of the stored image the model sees.

    ``foreground``: crop to the bounding box of the pixels brighter than this level (on the [0, 1] windowed
    image, before resizing; an image with none is kept whole); ``None``: the whole image. Collections differ in
    how much black surrounds the anatomy (a head filling the frame, or a small one in a wide field); the crop lets
    the letterbox show every image's anatomy at the same scale."""

    foreground: float | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; ``prob=0`` turns it off.

    ``gamma``, ``blur`` and ``clip_highlights`` imitate another site's acquisition and processing (off at 0): a
    contrast curve ``x ** gamma`` with gamma in ``[1 / (1 + gamma), 1 + gamma]``; a Gaussian blur of up to
    ``blur`` pixels at the training size; a narrower display window that saturates the densest parts,
    ``min(1, x * (1 + c))`` with ``c`` up to ``clip_highlights`` (the top ``c / (1 + c)`` of the range turns
    white). Each is applied with probability ``prob`` before the affine move and the noise.

    ``detector_resolution`` and ``detector_noise`` imitate a detector with fewer pixels (:mod:`medtl.data.acquisition`,
    off at 0): the image is resampled to a side ``1 - detector_resolution`` to 1 times its own, gets quantum noise
    of up to ``detector_noise * sqrt(x)`` there, and is enlarged back as the pipeline enlarges small images, so that
    the noise arrives as grain several pixels wide; with probability ``prob``, after the contrast curve and blur.

    ``acquisition_per_batch``: draw those acquisition changes once per training batch instead of once per image
    (:mod:`medtl.data.site_batches`), after the affine move and the noise, so that each batch looks like one other
    site and BatchNorm's batch statistics in training are those of one site, as AdaBN's are at a new one.

    ``counterfactual_histogram``: the probability of giving an image the grey-level distribution of a training
    image of another class (:class:`~medtl.data.counterfactual.RandCounterfactualHistogramd`), so that the
    histogram stops telling the label where the data check found it does (off at 0)."""

    prob: float = 0.8
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    noise_std: float = 0.02
    gamma: float = 0.0
    blur: float = 0.0
    clip_highlights: float = 0.0
    detector_resolution: float = 0.0
    detector_noise: float = 0.0
    acquisition_per_batch: bool = False
    counterfactual_histogram: float = 0.0


def deterministic_transforms(image_size: int, intensity: IntensityConfig,
                             dicom: DicomOptions = DicomOptions(), max_pixels: int = DEFAULT_MAX_PIXELS,
                             crop: CropConfig = CropConfig()) -> list:
    """Load, window to [0, 1], (crop to the foreground,) letterbox to ``(1, image_size, image_size)`` keeping the
    aspect ratio (equalising before the padding, when set). Files declaring more than ``max_pixels`` are refused
    before decoding."""
    equalize = [HistogramNormalized(IMAGE, num_bins=256, min=0, max=1)] if intensity.equalize else []
    return [
        LoadRadiographd(keys=IMAGE, dicom=dicom, max_pixels=max_pixels),
        ScaleIntensityRangePercentilesd(IMAGE, lower=intensity.lower_percentile, upper=intensity.upper_percentile,
                                        b_min=0.0, b_max=1.0, clip=True),
        *_crop_to_foreground(crop),  # (1, H, W) -> (1, h, w), the anatomy's bounding box
        ResizeLongestd(IMAGE, size=image_size),  # (1, S, <=S) or (1, <=S, S); area to shrink, bilinear to enlarge
        *equalize,
        SpatialPadd(IMAGE, spatial_size=(image_size, image_size)),
        EnsureTyped(IMAGE, dtype=np.float32, track_meta=False),
    ]


def _crop_to_foreground(crop: CropConfig) -> list:
    if crop.foreground is None:
        return []
    return [CropForegroundd(IMAGE, source_key=IMAGE, select_fn=partial(_brighter_than, level=crop.foreground),
                            allow_smaller=True, start_coord_key=None, end_coord_key=None)]


def _brighter_than(image: np.ndarray, level: float) -> np.ndarray:
    """The foreground mask of a ``(1, H, W)`` image; all of it when no pixel is brighter than ``level``."""
    mask = image > level
    return mask if mask.any() else mask | True


def train_transforms(image_size: int, weights: WeightsInfo, intensity: IntensityConfig,
                     augment: AugmentConfig, dicom: DicomOptions = DicomOptions(),
                     storage_dtype: type = np.float32, max_pixels: int = DEFAULT_MAX_PIXELS,
                     crop: CropConfig = CropConfig()) -> Compose:
    """Deterministic part (its output stored as ``storage_dtype``), random affine and noise, normalisation."""
    image_size_px = float(image_size)
    counterfactual = ([RandCounterfactualHistogramd(IMAGE, prob=augment.counterfactual_histogram)]
                      if augment.counterfactual_histogram > 0 else [])
    random_part = [
        EnsureTyped(IMAGE, dtype=np.float32, track_meta=False),
        *counterfactual,
        *([] if augment.acquisition_per_batch else _acquisition_augment(augment)),
        RandAffined(IMAGE, prob=augment.prob, rotate_range=np.deg2rad(augment.rotate_deg),
                    scale_range=augment.scale, translate_range=augment.translate * image_size_px,
                    padding_mode="zeros", mode="bilinear"),
        RandGaussianNoised(IMAGE, prob=augment.prob, std=augment.noise_std),
    ]
    return Compose([*deterministic_transforms(image_size, intensity, dicom, max_pixels, crop), _store_as(storage_dtype),
                    *random_part,
                    normalise_for(weights), EnsureTyped(IMAGE, dtype=np.float32, track_meta=False)])


def batch_augmentation(augment: AugmentConfig, weights: WeightsInfo) -> SiteBatches | None:
    """With ``augment.acquisition_per_batch``, the training loader's collation that draws the acquisition
    augmentation once per batch; ``None`` when it is off or there is nothing to draw."""
    steps = _acquisition_augment(augment)
    if not (augment.acquisition_per_batch and steps):
        return None
    subtrahend, divisor = normalisation_of(weights)
    return SiteBatches(steps, subtrahend, divisor)


def _acquisition_augment(augment: AugmentConfig) -> list:
    """Highlight clipping, contrast curve, blur and another detector on the ``(1, S, S)`` image in [0, 1], when
    configured."""
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
    if augment.detector_resolution > 0 or augment.detector_noise > 0:
        steps.append(RandDetectord(IMAGE, prob=augment.prob, min_scale=1.0 - augment.detector_resolution,
                                   noise=augment.detector_noise))
    return steps


def eval_transforms(image_size: int, weights: WeightsInfo, intensity: IntensityConfig,
                    dicom: DicomOptions = DicomOptions(), storage_dtype: type = np.float32,
                    max_pixels: int = DEFAULT_MAX_PIXELS, crop: CropConfig = CropConfig()) -> Compose:
    """Deterministic part, then the encoder's normalisation; the result is ``storage_dtype``."""
    return Compose([*deterministic_transforms(image_size, intensity, dicom, max_pixels, crop), normalise_for(weights),
                    _store_as(storage_dtype)])


def _store_as(dtype: type) -> EnsureTyped:
    """What a cache keeps: float16 halves a disk cache; models get float32 (the loop casts)."""
    return EnsureTyped(IMAGE, dtype=dtype, track_meta=False)


def normalise_for(weights: WeightsInfo) -> NormalizeIntensityd:
    """The encoder's input normalisation for one grey channel."""
    subtrahend, divisor = normalisation_of(weights)
    return NormalizeIntensityd(IMAGE, subtrahend=subtrahend, divisor=divisor)


def normalisation_of(weights: WeightsInfo) -> tuple[float, float]:
    """``(subtrahend, divisor)`` of the encoder's input normalisation for one grey channel."""
    # Grey input: the encoder's first convolution was collapsed to one channel, so one mean/std.
    return float(np.mean(weights.mean)), float(np.mean(weights.std))
