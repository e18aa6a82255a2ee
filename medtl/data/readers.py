"""Image readers behind MONAI's ``ImageReader`` interface, and the loading transform that uses them.

Every reader here returns arrays in row-major ``(H, W)`` order (rows first, as a viewer shows the
image), never MONAI's default transposed ``(W, H)``, so saliency maps overlay without a transpose.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

from dataclasses import dataclass

import numpy as np
from monai.config import KeysCollection
from monai.data import PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform, Transform
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from medtl.errors import MedtlError

__all__ = ["DicomOptions", "RadiographDicomReader", "GreyPILReader", "LoadRadiograph", "LoadRadiographd"]

# DICOM keywords used here (pydicom attribute names).
PHOTOMETRIC_INTERPRETATION = "PhotometricInterpretation"
BITS_STORED = "BitsStored"
PIXEL_REPRESENTATION = "PixelRepresentation"
RESCALE_SLOPE = "RescaleSlope"
RESCALE_INTERCEPT = "RescaleIntercept"
NUMBER_OF_FRAMES = "NumberOfFrames"
VOI_LUT_SEQUENCE = "VOILUTSequence"
MODALITY_LUT_SEQUENCE = "ModalityLUTSequence"
WINDOW_CENTER = "WindowCenter"
WINDOW_WIDTH = "WindowWidth"
COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L"

# Projection radiographs (CR/DX) have no patient-space geometry; MONAI warns about it for every file.
warnings.filterwarnings("ignore", message=r".*ImageOrientationPatient.*", category=UserWarning)


@dataclass(frozen=True)
class DicomOptions:
    """How DICOM pixels become an image (``data.dicom`` in the config).

    Attributes:
        voi: ``auto`` applies the file's VOI LUT, else its first WindowCenter/Width, when present (what
            a viewer shows); ``window`` prefers WindowCenter/Width when a file has both; ``none`` keeps
            modality values.
        frames: ``first`` keeps frame 0 of a multi-frame file as ``(H, W)``; ``all`` keeps ``(F, H, W)``.
    """

    voi: str = "auto"
    frames: str = "first"

    def __post_init__(self) -> None:
        if self.voi not in ("auto", "window", "none"):
            raise MedtlError(f"data.dicom.voi='{self.voi}' is unknown; use auto, window or none")
        if self.frames not in ("first", "all"):
            raise MedtlError(f"data.dicom.frames='{self.frames}' is unknown; use first or all")


class RadiographDicomReader(PydicomReader):
    """MONAI's ``PydicomReader`` plus the display pipeline a radiograph needs.

    Per the DICOM grayscale pipeline: modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence) ->
    VOI LUT or windowing (``options.voi``) -> MONOCHROME1 inverted over its output range, so that
    high attenuation (bone) is bright in every image. Colour (RGB/YBR) images become grey (BT.601
    luma; PALETTE COLOR through its palette first). Output: float32 ``(H, W)``, or ``(F, H, W)`` with ``frames="all"``. Metadata is pruned
    to geometry tags (MONAI's default), so no patient tags travel on.
    """

    def __init__(self, options: DicomOptions = DicomOptions(), **kwargs: Any) -> None:
        kwargs.setdefault("swap_ij", False)
        kwargs.setdefault("prune_metadata", True)
        kwargs.setdefault("force", True)  # read pre-standard files without the DICM preamble, as viewers do
        super().__init__(**kwargs)
        self.options = options

    def _get_seg_data(self, img: Any, filename: Any) -> tuple[np.ndarray, dict]:
        raise MedtlError(f"DICOM file {filename} is a Segmentation object, not an image; remove it from the data")

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        if "PixelData" not in img:
            raise MedtlError(f"DICOM file {filename} has no Pixel Data; it is not an image, remove it from the data")
        data = img.pixel_array  # pydicom's decoders; colour comes out as RGB
        if int(getattr(img, NUMBER_OF_FRAMES, 1) or 1) > 1 and self.options.frames == "first":
            data = data[0]  # (F, H, W[, 3]) -> (H, W[, 3])
        photometric = str(getattr(img, PHOTOMETRIC_INTERPRETATION, "MONOCHROME2"))
        if photometric == "PALETTE COLOR":  # indices, not intensities: map through the palette first
            data = apply_color_lut(data, img)  # (..., H, W) -> (..., H, W, 3)
        if photometric in COLOUR_PHOTOMETRICS or photometric == "PALETTE COLOR":
            return data.astype(np.float32) @ LUMA_WEIGHTS  # (..., H, W, 3) -> (..., H, W)
        data = np.asarray(apply_modality_lut(data, img), dtype=np.float32)
        low, high = _rescaled_range(img)
        has_lut, has_window = VOI_LUT_SEQUENCE in img, WINDOW_CENTER in img and WINDOW_WIDTH in img
        if self.options.voi != "none" and (has_lut or has_window):
            use_lut = has_lut and not (self.options.voi == "window" and has_window)
            data = np.asarray(apply_voi_lut(data, img, prefer_lut=use_lut), dtype=np.float32)
            low, high = _voi_output_range(img, low, high) if use_lut else (low, high)
        if photometric == "MONOCHROME1":
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

    def __init__(self, dicom: DicomOptions = DicomOptions()) -> None:
        with warnings.catch_warnings():  # MONAI probes its optional GPU DICOM decoder and warns on CPU
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
            self._loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
        self._dicom_reader, self._pil_reader = RadiographDicomReader(dicom), GreyPILReader()

    def __call__(self, path: str) -> Any:
        # The suffix picks the reader: MONAI would otherwise try every reader and report the last failure.
        reader = self._pil_reader if str(path).lower().endswith(PIL_SUFFIXES) else self._dicom_reader
        try:
            image = self._loader(path, reader=reader)
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

    def __init__(self, keys: KeysCollection, dicom: DicomOptions = DicomOptions()) -> None:
        super().__init__(keys)
        self.loader = LoadRadiograph(dicom)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.loader(out[key])
        return out


def _to_grey(image: Image.Image) -> Image.Image:
    return image.convert("L")


def _voi_output_range(img: Any, low: float, high: float) -> tuple[float, float]:
    """Output range of pydicom's VOI step: ``[0, 2**bits - 1]`` for a VOI LUT, else the windowing range."""
    if VOI_LUT_SEQUENCE in img:
        bits = int(img.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    return low, high


def _rescaled_range(img: Any) -> tuple[float, float]:
    """The range of stored values (from BitsStored and PixelRepresentation) after the modality LUT."""
    if MODALITY_LUT_SEQUENCE in img:
        lut_bits = int(img.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**lut_bits - 1)
    bits = int(getattr(img, BITS_STORED, 16))
    signed = int(getattr(img, PIXEL_REPRESENTATION, 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(getattr(img, RESCALE_SLOPE, 1.0))
    intercept = float(getattr(img, RESCALE_INTERCEPT, 0.0))
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]
