"""Radiographs: 2D DICOM, PNG, JPEG, TIFF and BMP files as ``(1, S, S)`` images (see :mod:`medtl.data.transforms`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medtl.data.inventory import Inventory, scan_folder
from medtl.data.pipelines.base import ImagePipeline, demo_spec, register_pipeline
from medtl.data.readers import DEFAULT_MAX_PIXELS, DicomOptions, LoadRadiograph
from medtl.data.transforms import (AugmentConfig, CropConfig, IntensityConfig, batch_augmentation, eval_transforms,
                                   train_transforms)
from medtl.models.registry import WeightsInfo

if TYPE_CHECKING:
    from monai.transforms import Compose

    from medtl.data.check import ImageFacts
    from medtl.data.site_batches import SiteBatches

__all__ = ["RadiographPipeline", "radiograph_tta_views"]


@register_pipeline("radiograph")
class RadiographPipeline(ImagePipeline):
    """Load (DICOM grayscale pipeline or PIL) -> percentile window to [0, 1] -> (crop to the foreground) ->
    letterbox to ``(1, S, S)`` -> (training) random affine and noise -> the encoder's normalisation.

    Args:
        image_size: side ``S`` of the square input.
        intensity, augment, dicom: :class:`IntensityConfig`, :class:`AugmentConfig`, :class:`DicomOptions` fields.
        max_pixels: a file declaring more pixels is refused before it is decoded.
        crop: :class:`CropConfig` fields (``foreground``).
    """

    spatial_dims = 2

    def __init__(self, image_size: int = 224, intensity: dict | None = None, augment: dict | None = None,
                 dicom: dict | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, crop: dict | None = None) -> None:
        self.image_size = int(image_size)
        self.crop = CropConfig(**dict(crop or {}))
        self.intensity = IntensityConfig(**dict(intensity or {}))
        self.augment = AugmentConfig(**dict(augment or {}))
        self.dicom = DicomOptions(**dict(dicom or {}))
        self.max_pixels = int(max_pixels)
        self._loader: LoadRadiograph | None = None

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    def train_transforms(self, weights: WeightsInfo, storage_dtype: type = np.float32) -> Compose:
        return train_transforms(self.image_size, weights, self.intensity, self.augment, self.dicom, storage_dtype,
                                self.max_pixels, self.crop)

    def eval_transforms(self, weights: WeightsInfo, storage_dtype: type = np.float32) -> Compose:
        return eval_transforms(self.image_size, weights, self.intensity, self.dicom, storage_dtype, self.max_pixels,
                               self.crop)

    def batch_augmentation(self, weights: WeightsInfo) -> SiteBatches | None:
        return batch_augmentation(self.augment, weights)

    def scan_folder(self, folder: Path, root: Path | None = None, allow_outside_root: bool = True) -> Inventory:
        return scan_folder(folder, root, allow_outside_root)

    def inspect(self, path: str) -> ImageFacts:
        from medtl.data.check import inspect_image

        if self._loader is None:
            self._loader = LoadRadiograph(self.dicom, self.max_pixels)
        return inspect_image(path, self._loader)

    def tta_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        return radiograph_tta_views(images)

    def demo(self, demo_dir: str, spec: dict[str, Any]) -> Path:
        """Synthetic chest radiographs as DICOM (:mod:`medtl.data.demo`)."""
        from medtl.data.demo import DemoSpec, ensure_demo_chest_xray

        return ensure_demo_chest_xray(demo_dir, demo_spec(DemoSpec, spec))

    def site_signature(self, severity: str) -> str:
        from dataclasses import asdict

        from medtl.data.shift import shift_for

        return json.dumps([asdict(shift_for(severity)), asdict(self.dicom)], default=str)

    def write_site(self, frame: Any, folder: Path, severity: str, seed: int) -> Any:
        """The acquisition shift ``severity`` of :mod:`medtl.data.shift`, as 12-bit MONOCHROME1 DICOM."""
        from medtl.data.shift import shift_for, write_shifted_site

        return write_shifted_site(frame, folder / "images", shift_for(severity), seed, self.dicom)

    def cache_signature(self, weights: WeightsInfo) -> str:
        # The radiograph cache key of medtl before pipelines, so existing disk caches stay valid.
        from dataclasses import asdict

        intensity = asdict(self.intensity)
        if not intensity["equalize"]:
            del intensity["equalize"]  # the key before equalisation existed
        crop = "" if self.crop == CropConfig() else f"|{asdict(self.crop)}"  # the key before cropping existed
        return f"v2-float16|{self.image_size}|{intensity}|{asdict(self.dicom)}|{weights.mean}|{weights.std}{crop}"

    @classmethod
    def from_preprocessing(cls, pre: Any) -> RadiographPipeline:
        """From a version-2 card's ``Preprocessing`` (before cards named their pipeline)."""
        return cls(pre.image_size, {"lower_percentile": pre.lower_percentile, "upper_percentile": pre.upper_percentile},
                   None, {"voi": pre.dicom_voi, "frames": pre.dicom_frames})


def radiograph_tta_views(images: torch.Tensor, shift_fraction: float = 0.04) -> list[torch.Tensor]:
    """Test-time views of ``(B, C, H, W)`` images: as they are, flipped left-right, and shifted by
    ``shift_fraction`` of the size down-right and up-left (edges replicated, same shape)."""
    shift = max(1, round(shift_fraction * images.shape[-1]))
    padded = torch.nn.functional.pad(images, (shift, shift, shift, shift), mode="replicate")  # (B, C, H+2s, W+2s)
    height, width = images.shape[-2:]
    return [images, torch.flip(images, dims=[-1]), padded[..., :height, :width],
            padded[..., 2 * shift:2 * shift + height, 2 * shift:2 * shift + width]]
