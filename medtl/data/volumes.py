"""Volumes: NIfTI files and DICOM series as channel-first, RAS-oriented arrays.

Layout: ``(C, X, Y, Z)`` after :class:`LoadVolume` (a 4D NIfTI's fourth axis becomes ``C``), with axes
running towards Right, Anterior, Superior once reoriented. Intensities are in the file's physical units
(NIfTI ``scl_slope`` / ``scl_inter`` and DICOM RescaleSlope/Intercept applied by MONAI's readers). The affine
and the voxel spacing (``pixdim``) travel in the ``MetaTensor`` metadata.

A DICOM series is read through :mod:`medtl.data.dicom_series` (grouped by SeriesInstanceUID, ordered by
position, gaps refused) and stacked by MONAI's ``PydicomReader``, which computes the affine.
"""
from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from monai.config import KeysCollection
from monai.data import NibabelReader, PydicomReader
from monai.transforms import LoadImage, MapTransform, Orientation, Spacing, Transform

from medtl.data.dicom_series import is_series_path, resolve_series
from medtl.data.readers import DEFAULT_MAX_PIXELS
from medtl.errors import MedtlError

__all__ = ["NIFTI_SUFFIXES", "is_nifti", "is_volume_path", "SeriesReader", "LoadVolume", "LoadVolumed"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_volume_path(path: str | Path) -> bool:
    """A NIfTI file or a DICOM series (a folder, or ``<folder>#series-<n>``)."""
    return is_nifti(path) or is_series_path(path)


class SeriesReader(PydicomReader):
    """MONAI's ``PydicomReader`` reading one series named by :func:`~medtl.data.dicom_series.resolve_series`.

    MONAI stacks a folder's files in ``InstanceNumber`` order and mixes series; here the slices are the named
    series' only, in position order (their in-memory ``InstanceNumber`` is set to that order before stacking).
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, **kwargs: Any) -> None:
        kwargs.setdefault("force", True)
        super().__init__(**kwargs)
        self.max_pixels = max_pixels

    def verify_suffix(self, filename: Any) -> bool:
        return all(is_series_path(name) for name in ((filename,) if isinstance(filename, (str, Path)) else filename))

    def read(self, data: Any, **kwargs: Any) -> Any:
        series = resolve_series(str(data[0] if isinstance(data, (list, tuple)) else data))
        slices = []
        for order, path in enumerate(series.files, start=1):
            dataset = pydicom.dcmread(path, **{**self.kwargs, **kwargs})
            dataset = copy.copy(dataset)
            dataset.InstanceNumber = order
            slices.append(dataset)
        declared = len(slices) * int(getattr(slices[0], "Rows", 0)) * int(getattr(slices[0], "Columns", 0))
        if declared > self.max_pixels:
            raise MedtlError(f"DICOM series {series.name} declares {declared:,} voxels, over data.max_pixels="
                             f"{self.max_pixels:,}; it was not decoded")
        self.filenames, self.has_series = [list(series.files)], len(slices) > 1
        return slices if len(slices) > 1 else slices[0]


class LoadVolume(Transform):
    """Load a NIfTI file or a DICOM series as float32 ``(C, X, Y, Z)``, reoriented to RAS, optionally resampled.

    Args:
        pixdim: target voxel spacing in mm (e.g. ``(1.0, 1.0, 1.0)``); ``None`` keeps the file's.
        axcodes: target orientation; RAS by default, as MONAI and nibabel use.
        max_pixels: a volume declaring more voxels is refused before it is decoded.
    """

    def __init__(self, pixdim: Sequence[float] | None = None, axcodes: str = "RAS",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        # Readers are passed per call: a reader given to LoadImage's constructor falls back to MONAI's defaults on
        # failure, which would read a broken series anyway (mixing series, ordered by InstanceNumber).
        self._load = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
        self._nifti_reader, self._series_reader = NibabelReader(), SeriesReader(max_pixels)
        self._orient = Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))
        self._resample = Spacing(pixdim=pixdim, mode="bilinear") if pixdim else None
        self.max_pixels = max_pixels

    def __call__(self, path: str) -> Any:
        volume = self._orient(self._read(str(path)))
        return self._resample(volume) if self._resample is not None else volume

    def _read(self, path: str) -> Any:
        if not (is_nifti(path) or is_series_path(path)):
            raise MedtlError(f"{path} is neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder")
        try:
            if is_nifti(path):
                self._check_nifti_size(path)
                volume = self._load(path, reader=self._nifti_reader)
            else:
                volume = self._load(path, reader=self._series_reader)
        except MedtlError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure is a problem with this file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MedtlError(f"cannot read volume {path}: {reason}; fix the file or remove it from the data") from exc
        if not np.isfinite(np.asarray(volume)).all():
            raise MedtlError(f"volume {path} has NaN or infinite voxels; fix the file or remove it from the data")
        return volume

    def _check_nifti_size(self, path: str) -> None:
        shape = nib.load(path).header.get_data_shape()  # the header only
        voxels = int(np.prod(shape)) if shape else 0
        if voxels > self.max_pixels:
            raise MedtlError(f"volume {path} declares {'x'.join(map(str, shape))} = {voxels:,} voxels, over "
                             f"data.max_pixels={self.max_pixels:,}; it was not decoded")


class LoadVolumed(MapTransform):
    """Dictionary wrapper of :class:`LoadVolume`: replaces each key's path with its ``(C, X, Y, Z)`` volume."""

    def __init__(self, keys: KeysCollection, pixdim: Sequence[float] | None = None, axcodes: str = "RAS",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(keys)
        self.loader = LoadVolume(pixdim, axcodes, max_pixels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.loader(out[key])
        return out
