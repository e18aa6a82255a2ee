"""Image readers behind MONAI's ``ImageReader`` interface, and the loading transform that uses them.

Every reader here returns arrays in row-major ``(H, W)`` order (rows first, as a viewer shows the
image), never MONAI's default transposed ``(W, H)``, so saliency maps overlay without a transpose.
"""
from __future__ import annotations

import gzip
import io
import logging
import re
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

from dataclasses import dataclass

import numpy as np
from monai.config import KeysCollection
from monai.data import PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform, Transform
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from medtl.data.inventory import describe_path, require_readable, sniff
from medtl.errors import MedtlError

__all__ = ["DicomOptions", "RadiographDicomReader", "GreyPILReader", "LoadRadiograph", "LoadRadiographd",
           "DEFAULT_MAX_PIXELS"]

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
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
DEFAULT_MAX_PIXELS = 2**28  # data.max_pixels, 268M: 16,384 x 16,384, or 120 frames of 640 x 480 RGB; about 1 GB as float32
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

    def __init__(self, options: DicomOptions = DicomOptions(), max_pixels: int = DEFAULT_MAX_PIXELS,
                 gzipped: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("swap_ij", False)
        kwargs.setdefault("prune_metadata", True)
        kwargs.setdefault("force", True)  # read pre-standard files without the DICM preamble, as viewers do
        super().__init__(**kwargs)
        self.options, self.max_pixels, self.gzipped = options, max_pixels, gzipped

    def read(self, data: Any, **kwargs: Any) -> Any:
        """One file, plain or (``gzipped``) gzip-compressed, decompressed in memory with a size cap."""
        name = str(data[0] if isinstance(data, (list, tuple)) else data)
        if not self.gzipped:
            return super().read(data, **kwargs)
        self.filenames, self.has_series = [name], False
        return pydicom.dcmread(io.BytesIO(_gunzip_capped(name, self.max_pixels * 8)), **{**self.kwargs, **kwargs})

    def _get_seg_data(self, img: Any, filename: Any) -> tuple[np.ndarray, dict]:
        raise MedtlError(f"DICOM file {filename} is a Segmentation object, not an image; remove it from the data")

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        if not any(keyword in img for keyword in PIXEL_DATA_KEYWORDS):
            raise MedtlError(f"DICOM file {filename} has no Pixel Data; it is not an image, remove it from the data")
        declared = _declared_pixels(img)
        if declared > self.max_pixels:
            raise MedtlError(f"DICOM file {filename} declares {declared:,} pixels (Rows x Columns x frames x samples), "
                             f"over the decoding budget data.max_pixels={self.max_pixels:,}; it was not decoded: "
                             "check the file, or raise data.max_pixels if it is genuine")
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
    """MONAI's ``PILReader`` returning ``(H, W)`` greyscale: colour and palette images become 8-bit luma,
    16-bit and float images (``I``, ``F`` modes) keep their values. Files declaring more than ``max_pixels``
    are refused before decoding (PIL's own bomb check is a warning up to twice its limit)."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, **kwargs: Any) -> None:
        kwargs.setdefault("reverse_indexing", False)
        kwargs.setdefault("converter", _to_grey)
        super().__init__(**kwargs)
        self.max_pixels = max_pixels

    def read(self, data: Any, **kwargs: Any) -> Any:
        name = str(data[0] if isinstance(data, (list, tuple)) else data)
        try:
            with Image.open(name) as probe:  # reads the header only
                width, height = probe.size
                frames = getattr(probe, "n_frames", 1)
        except Image.DecompressionBombError as exc:  # PIL's own ceiling (twice Image.MAX_IMAGE_PIXELS)
            declared = re.search(r"\((\d+) pixels\)", str(exc))
            raise MedtlError(f"image {name} declares {int(declared.group(1)) if declared else 0:,} pixels, over PIL's "
                             f"decoding limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,}; it was not decoded") from None
        if width * height * frames > self.max_pixels:
            raise MedtlError(f"image {name} declares {width}x{height} pixels x {frames} frame(s), over the decoding "
                             f"budget data.max_pixels={self.max_pixels:,}; it was not decoded: check the file, or "
                             "raise data.max_pixels if it is genuine")
        return super().read(data, **kwargs)


class LoadRadiograph(Transform):
    """Load a radiograph file (DICOM or PNG/JPEG) as a channel-first float32 ``(1, H, W)`` array.

    Any failure to read becomes a :class:`MedtlError` naming the file.
    """

    def __init__(self, dicom: DicomOptions = DicomOptions(), max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        with warnings.catch_warnings():  # MONAI probes its optional GPU DICOM decoder and warns on CPU
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
            self._loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
        self._dicom_reader, self._pil_reader = RadiographDicomReader(dicom, max_pixels), GreyPILReader(max_pixels)
        self._dicom_gz_reader = RadiographDicomReader(dicom, max_pixels, gzipped=True)

    def __call__(self, path: str) -> Any:
        try:
            image = self._loader(path, reader=self._reader_for(path))
        except MedtlError:
            raise
        except Exception as exc:  # noqa: BLE001 - every reader failure is a user-data problem
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MedtlError(f"cannot read image {path}: {reason}; fix the file or remove it from the data") from exc
        if not np.isfinite(np.asarray(image)).all():
            raise MedtlError(f"image {path} has NaN or infinite pixels; fix the file or remove it from the data")
        return image

    def _reader_for(self, path: str) -> Any:
        """The reader the file's content calls for (MONAI would otherwise try every reader and report the last
        failure); a path that must not be opened, an empty file or a non-image stops with one line first."""
        require_readable(path)
        kind = sniff(path)
        if kind in ("png", "jpeg", "tiff", "bmp") or (kind == "unknown" and str(path).lower().endswith(PIL_SUFFIXES)):
            return self._pil_reader
        if kind in ("dicom", "dicom.gz"):
            return self._dicom_gz_reader if kind == "dicom.gz" else self._dicom_reader
        reason = {"empty": "the file is empty (0 bytes)", "nifti": "it is a NIfTI volume, not a 2D image",
                  "gzip": "it is gzip-compressed but holds no DICOM"}.get(
            kind, "it is neither DICOM (no DICM marker) nor PNG, JPEG, TIFF or BMP")
        raise MedtlError(f"cannot read image {describe_path(path)}: {reason}; fix the file or remove it from the data")


class LoadRadiographd(MapTransform):
    """Dictionary wrapper of :class:`LoadRadiograph`: replaces each key's path with its ``(1, H, W)`` image."""

    def __init__(self, keys: KeysCollection, dicom: DicomOptions = DicomOptions(),
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(keys)
        self.loader = LoadRadiograph(dicom, max_pixels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.loader(out[key])
        return out


def _to_grey(image: Image.Image) -> Image.Image:
    """Colour, palette and 1-bit images to 8-bit luma; greyscale of 16 bits or floats (``I``, ``F``) as they are."""
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        return image
    return image.convert("L")


def _declared_pixels(img: Any) -> int:
    """Rows x Columns x frames x samples, from the header alone (nothing decoded)."""
    rows, columns = int(getattr(img, "Rows", 0) or 0), int(getattr(img, "Columns", 0) or 0)
    frames = int(getattr(img, NUMBER_OF_FRAMES, 1) or 1)
    samples = int(getattr(img, "SamplesPerPixel", 1) or 1)
    return rows * columns * frames * samples


def _gunzip_capped(path: str, max_bytes: int) -> bytes:
    """The decompressed bytes of ``path``; a file that would exceed ``max_bytes`` is refused (a gzip bomb)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise MedtlError(f"{path} decompresses to more than {max_bytes:,} bytes; refused (raise data.max_pixels "
                         "if it is genuine)")
    return data


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
