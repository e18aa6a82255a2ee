"""Image readers behind MONAI's ``ImageReader`` interface, and the loading transform that uses them.

Every reader here returns arrays in row-major ``(H, W)`` order (rows first, as a viewer shows the
image), never MONAI's default transposed ``(W, H)``, so saliency maps overlay without a transpose.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform, Transform
from PIL import Image

from medtl.errors import MedtlError

__all__ = ["RadiographDicomReader", "GreyPILReader", "LoadRadiograph", "LoadRadiographd"]

# DICOM keywords used here (pydicom attribute names).
PHOTOMETRIC_INTERPRETATION = "PhotometricInterpretation"
BITS_STORED = "BitsStored"
PIXEL_REPRESENTATION = "PixelRepresentation"
RESCALE_SLOPE = "RescaleSlope"
RESCALE_INTERCEPT = "RescaleIntercept"
NUMBER_OF_FRAMES = "NumberOfFrames"

# Projection radiographs (CR/DX) have no patient-space geometry; MONAI warns about it for every file.
warnings.filterwarnings("ignore", message=r".*ImageOrientationPatient.*", category=UserWarning)


class RadiographDicomReader(PydicomReader):
    """MONAI's ``PydicomReader`` plus the photometric handling a radiograph needs.

    On top of the modality LUT (RescaleSlope/Intercept) that MONAI applies, MONOCHROME1 images are
    inverted over their stored range so that high attenuation (bone) is bright in every image,
    and only the first frame of a multi-frame file is kept. Output: float32 ``(H, W)``.
    Metadata is pruned to geometry tags (MONAI's default), so no patient tags travel on.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("swap_ij", False)
        kwargs.setdefault("prune_metadata", True)
        super().__init__(**kwargs)

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        if "PixelData" not in img:
            raise MedtlError(f"DICOM file {filename} has no Pixel Data; it is not an image, remove it from the data")
        data = np.asarray(super()._get_array_data(img, filename), dtype=np.float32)
        if int(getattr(img, NUMBER_OF_FRAMES, 1) or 1) > 1:
            data = data[0]  # (frames, H, W) -> (H, W)
        if getattr(img, PHOTOMETRIC_INTERPRETATION, "MONOCHROME2") == "MONOCHROME1":
            low, high = _rescaled_range(img)
            data = (low + high) - data
        return data


class GreyPILReader(PILReader):
    """MONAI's ``PILReader`` that converts every image to 8-bit greyscale, returned as ``(H, W)``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("reverse_indexing", False)
        kwargs.setdefault("converter", _to_grey)
        super().__init__(**kwargs)


class LoadRadiograph(Transform):
    """Load a radiograph file (DICOM or PNG/JPEG) as a channel-first float32 ``(1, H, W)`` array.

    Any failure to read becomes a :class:`MedtlError` naming the file.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():  # MONAI probes its optional GPU DICOM decoder and warns on CPU
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
            self._loader = LoadImage(reader=[RadiographDicomReader(), GreyPILReader()], image_only=True,
                                     ensure_channel_first=True, dtype=np.float32)

    def __call__(self, path: str) -> Any:
        try:
            image = self._loader(path)
        except MedtlError:
            raise
        except Exception as exc:  # noqa: BLE001 - every reader failure is a user-data problem
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MedtlError(f"cannot read image {path}: {reason}; fix the file or remove it from the data") from exc
        if not np.isfinite(np.asarray(image)).all():
            raise MedtlError(f"image {path} has NaN or infinite pixels; fix the file or remove it from the data")
        return image


class LoadRadiographd(MapTransform):
    """Dictionary wrapper of :class:`LoadRadiograph`: replaces each key's path with its ``(1, H, W)`` image."""

    def __init__(self, keys: KeysCollection) -> None:
        super().__init__(keys)
        self.loader = LoadRadiograph()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.loader(out[key])
        return out


def _to_grey(image: Image.Image) -> Image.Image:
    return image.convert("L")


def _rescaled_range(img: Any) -> tuple[float, float]:
    """The range of stored values (from BitsStored and PixelRepresentation) after the modality LUT."""
    bits = int(getattr(img, BITS_STORED, 16))
    signed = int(getattr(img, PIXEL_REPRESENTATION, 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(getattr(img, RESCALE_SLOPE, 1.0))
    intercept = float(getattr(img, RESCALE_INTERCEPT, 0.0))
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]
