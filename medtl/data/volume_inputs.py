"""Which entries of a folder are volumes: NIfTI files, and DICOM series (see :mod:`medtl.data.dicom_series`).

In a folder, a ``.nii``/``.nii.gz`` file is one volume; its DICOM files are grouped into series (one volume per
series); a sub-folder holding DICOM files is one volume per series it holds. Everything else is skipped or
refused with its reason, as :func:`medtl.data.inventory.scan_folder` does for 2D images.
"""
from __future__ import annotations

import os
from pathlib import Path

from medtl.data.dicom_series import find_series
from medtl.data.inventory import REFUSED, SKIPPED, Inventory, check_path, sniff

__all__ = ["scan_volume_folder"]


def scan_volume_folder(folder: Path, root: Path | None = None, allow_outside_root: bool = True) -> Inventory:
    """Volumes directly inside ``folder`` (files and series folders) as ``used``; the rest with a reason."""
    inventory, has_dicom = Inventory(), False
    for entry in sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name)):
        path = Path(entry.path)
        if entry.name.startswith("."):
            inventory.add(path, SKIPPED, "hidden file" if not entry.is_dir() else "hidden folder")
        elif entry.is_dir(follow_symlinks=False):
            _series_folder(path, inventory)
        elif entry.is_symlink() and os.path.isdir(path):
            inventory.add(path, SKIPPED, "a link to a folder; links to folders are not followed")
        elif (reason := check_path(path, root, allow_outside_root)) is not None:
            inventory.add(path, REFUSED, reason)
        else:
            kind = sniff(path)
            if kind == "nifti":
                inventory.used.append(path)
            elif kind in ("dicom", "dicom.gz"):
                has_dicom = True
            else:
                inventory.add(path, SKIPPED, "not a volume (neither NIfTI nor a DICOM slice)")
    if has_dicom:
        inventory.used += [Path(series.name) for series in find_series(folder, check=False)]
    return inventory


def _series_folder(folder: Path, inventory: Inventory) -> None:
    """A sub-folder: its DICOM series are volumes; without DICOM files it is skipped."""
    series = find_series(folder, check=False)
    if series:
        inventory.used += [Path(s.name) for s in series]
    else:
        inventory.add(folder, SKIPPED, "a folder without DICOM slices; a volume folder holds one DICOM series")
