"""Volumes: NIfTI files and DICOM series folders as channel-first, RAS-oriented arrays.

Layout: ``(C, X, Y, Z)`` after :class:`LoadVolume` (a 4D NIfTI's fourth axis becomes ``C``; a 2D
file gives ``(C, X, Y)``). Intensities are in the file's physical units (NIfTI ``scl_slope`` /
``scl_inter`` and DICOM RescaleSlope/Intercept applied by the readers). The affine and the voxel
spacing (``pixdim``) travel in the ``MetaTensor`` metadata.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import NibabelReader, PydicomReader
from monai.transforms import LoadImage, Orientation, Spacing, Transform

from medtl.errors import MedtlError

__all__ = ["NIFTI_SUFFIXES", "is_nifti", "LoadVolume"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


class LoadVolume(Transform):
    """Load a NIfTI file or a folder holding one DICOM series, reorient to RAS, optionally resample.

    Args:
        pixdim: target voxel spacing in mm (e.g. ``(1.0, 1.0, 1.0)``); ``None`` keeps the file's.
        axcodes: target orientation; RAS by default, as MONAI and nibabel use.
    """

    def __init__(self, pixdim: Sequence[float] | None = None, axcodes: str = "RAS") -> None:
        self._load = LoadImage(reader=[NibabelReader(), PydicomReader()], image_only=True, ensure_channel_first=True,
                               dtype=np.float32)
        self._orient = Orientation(axcodes=axcodes)
        self._resample = Spacing(pixdim=pixdim, mode="bilinear") if pixdim else None

    def __call__(self, path: str) -> Any:
        source = Path(path)
        if not (source.is_dir() or is_nifti(source)):
            raise MedtlError(f"{path} is neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder")
        try:
            volume = self._load(str(source))
        except Exception as exc:  # noqa: BLE001 - any reader failure is a problem with this file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MedtlError(f"cannot read volume {path}: {reason}; fix the file or remove it from the data") from exc
        if not np.isfinite(np.asarray(volume)).all():
            raise MedtlError(f"volume {path} has NaN or infinite voxels; fix the file or remove it from the data")
        volume = self._orient(volume)
        return self._resample(volume) if self._resample is not None else volume
