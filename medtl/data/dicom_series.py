"""DICOM series: the slices of one volume found in a folder, grouped and ordered as a scanner meant them.

A folder whose DICOM files are the slices of one series is one volume, named by the folder. A folder holding
several series (a scanner's export of a whole study) is split by ``SeriesInstanceUID``; each series is one
volume named ``<folder>#series-<SeriesNumber>`` (or ``#series-<k>`` by order when series numbers are missing or
repeated). UIDs never appear in names: the DICOM confidentiality profile treats them as identifying.

Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected on the cross
product of ``ImageOrientationPatient``'s rows), never by file name or ``InstanceNumber``; a gap larger than
1.5 times the usual slice distance (a missing slice) is an error naming the series and the position.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medtl.errors import MedtlError

__all__ = ["SERIES_MARK", "DicomSeries", "find_series", "resolve_series", "split_series_path", "is_series_path"]

SERIES_MARK = "#series-"
GAP_TOLERANCE = 1.5  # a slice distance above this multiple of the median one means a missing slice
HEADER_TAGS = ["SeriesInstanceUID", "SeriesNumber", "ImagePositionPatient", "ImageOrientationPatient",
               "InstanceNumber", "Rows", "Columns"]


@dataclass(frozen=True)
class DicomSeries:
    """One series: its name (the volume's path), its slice files in position order and their positions (mm)."""

    name: str
    files: tuple[str, ...]
    positions: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.files)


def is_series_path(path: str | Path) -> bool:
    """Whether ``path`` names a series volume (a folder, or ``<folder>#series-<n>``), not a file."""
    folder, _ = split_series_path(path)
    return Path(folder).is_dir()


def split_series_path(path: str | Path) -> tuple[str, str | None]:
    """``"<folder>#series-3"`` -> ``("<folder>", "3")``; a plain folder -> ``(folder, None)``."""
    text = str(path)
    if SERIES_MARK in text:
        folder, _, number = text.rpartition(SERIES_MARK)
        return folder, number
    return text, None


def find_series(folder: str | Path, check: bool = True) -> list[DicomSeries]:
    """Every series of the DICOM files directly inside ``folder``, each with its slices in position order.
    With ``check=False`` (to name the series of a folder) slices are not ordered or checked.

    Raises:
        MedtlError: a series has a missing slice (a gap in positions), two slices at one position, or slices
            without the geometry (ImagePositionPatient, ImageOrientationPatient) that ordering needs.
    """
    folder = Path(folder)
    headers = _headers(folder)
    if not headers:
        return []
    by_uid: dict[str, list[tuple[str, pydicom.Dataset]]] = {}
    for path, header in headers:
        by_uid.setdefault(str(getattr(header, "SeriesInstanceUID", "")), []).append((path, header))
    groups = sorted(by_uid.values(), key=lambda g: (_series_number(g[0][1]) or 0, g[0][0]))
    names = _series_names(folder, groups)
    if not check:
        return [DicomSeries(name, tuple(path for path, _ in group), ()) for name, group in zip(names, groups)]
    return [_ordered(name, group) for name, group in zip(names, groups)]


def resolve_series(path: str | Path) -> DicomSeries:
    """The series a volume path names: a folder holding exactly one series, or ``<folder>#series-<n>``."""
    folder, number = split_series_path(path)
    found = find_series(folder, check=False)
    if not found:
        raise MedtlError(f"{folder} holds no DICOM files; a series folder must hold the DICOM slices of a volume")
    if number is None:
        if len(found) > 1:
            raise MedtlError(f"{folder} holds {len(found)} DICOM series ({', '.join(s.name for s in found)}); "
                             "name one of them as the volume's path")
        return _check_series(found[0])
    wanted = f"{folder}{SERIES_MARK}{number}"
    for series in found:
        if series.name == wanted:
            return _check_series(series)
    raise MedtlError(f"{wanted}: no such series in {folder}; it holds {', '.join(s.name for s in found)}")


def _check_series(series: DicomSeries) -> DicomSeries:
    return _ordered(series.name, [(path, _header(path)) for path in series.files])


def _header(path: str) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS, force=True)


def _headers(folder: Path) -> list[tuple[str, pydicom.Dataset]]:
    """``(path, header)`` of every DICOM file directly inside ``folder`` (pixel data not read), by name."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            header = pydicom.dcmread(entry.path, stop_before_pixels=True, specific_tags=HEADER_TAGS)  # DICM preamble
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "SeriesInstanceUID" in header or "ImagePositionPatient" in header:
            found.append((entry.path, header))
    return found


def _series_number(header: pydicom.Dataset) -> int | None:
    value = getattr(header, "SeriesNumber", None)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _series_names(folder: Path, groups: Sequence[list[tuple[str, pydicom.Dataset]]]) -> list[str]:
    """The folder itself for one series; ``#series-<SeriesNumber>`` (``#series-<k>`` when not unique) for several."""
    if len(groups) == 1:
        return [str(folder)]
    numbers = [_series_number(group[0][1]) for group in groups]
    unique = None not in numbers and len(set(numbers)) == len(numbers)
    labels = [str(n) for n in numbers] if unique else [str(k) for k in range(1, len(groups) + 1)]
    return [f"{folder}{SERIES_MARK}{label}" for label in labels]


def _ordered(name: str, group: list[tuple[str, pydicom.Dataset]]) -> DicomSeries:
    """The series' slices sorted by position along the slice normal, checked for gaps and repeats."""
    positions = []
    for path, header in group:
        if "ImagePositionPatient" not in header or "ImageOrientationPatient" not in header:
            raise MedtlError(f"DICOM series {name}: slice {Path(path).name} has no ImagePositionPatient or "
                             "ImageOrientationPatient; slices cannot be ordered without them")
        orientation = np.asarray(header.ImageOrientationPatient, dtype=float)  # row (3,), column (3,)
        normal = np.cross(orientation[:3], orientation[3:])
        positions.append(float(np.dot(normal, np.asarray(header.ImagePositionPatient, dtype=float))))
    order = np.argsort(positions, kind="stable")
    files = tuple(group[i][0] for i in order)
    sorted_positions = np.asarray(positions)[order]
    _check_spacing(name, files, sorted_positions)
    return DicomSeries(name, files, tuple(float(p) for p in sorted_positions))


def _check_spacing(name: str, files: Sequence[str], positions: np.ndarray) -> None:
    if len(positions) < 2:
        return
    steps = np.diff(positions)
    repeated = np.flatnonzero(steps < 1e-3)
    if len(repeated):
        first = repeated[0]
        raise MedtlError(f"DICOM series {name}: slices {Path(files[first]).name} and {Path(files[first + 1]).name} "
                         f"are at the same position ({positions[first]:.2f} mm); remove the duplicate slice")
    usual = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_TOLERANCE * usual)
    if len(gaps):
        at = gaps[0]
        raise MedtlError(f"DICOM series {name}: {steps[at]:.2f} mm between slices {Path(files[at]).name} and "
                         f"{Path(files[at + 1]).name} where the others are {usual:.2f} mm apart: a slice is "
                         "missing; restore it or remove the series from the data")
