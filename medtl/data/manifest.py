"""Manifests: the CSV that lists every image of a data set (schema in ``data_manifests/README.md``).

A manifest has one row per image with the columns ``path``, ``label`` and ``patient_id`` and,
optionally, ``split`` (``train``/``val``/``test``) and ``domain``. Relative paths are relative to
the manifest file's folder. In memory, paths are always absolute.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from medtl.atomic import write_csv_atomic
from medtl.data.dicom_series import SERIES_MARK
from medtl.data.pseudonym import MIN_KEY_BYTES, PSEUDONYM_KEY_ENV, pseudonym
from medtl.data.inventory import (IMAGE_SUFFIXES, SKIPPED, Inventory, check_path, describe_path, inside_folder,
                                  scan_folder)
from medtl.errors import MedtlError

__all__ = [
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "IMAGE_SUFFIXES",
    "SPLIT_NAMES",
    "read_manifest",
    "write_manifest",
    "manifest_from_tree",
    "scan_tree",
    "list_images",
    "patient_id_from_name",
    "pseudonymise_patient_ids",
    "PSEUDONYM_KEY_ENV",
]


FolderScanner = Callable[[Path, Path, bool], Inventory]  # (folder, root, allow_outside_root) -> its inputs
REQUIRED_COLUMNS = ("path", "label", "patient_id")
OPTIONAL_COLUMNS = ("split", "domain")
log = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}


def read_manifest(path: str | Path, required: Sequence[str] = REQUIRED_COLUMNS, root: str | Path | None = None,
                  allow_outside_root: bool = False) -> pd.DataFrame:
    """Read and validate a manifest CSV; return it with absolute ``path`` values.

    Relative paths are relative to the manifest's folder and must stay inside ``root`` (the manifest's
    folder by default; links are followed) unless ``allow_outside_root``; absolute paths are taken as written.

    Raises:
        MedtlError: the file is missing or empty, a required column is missing, a cell is empty, a listed
            image does not exist, or a listed path must not be opened (FIFO, device, link loop, outside ``root``).
    """
    path = Path(path)
    if not path.is_file():
        raise MedtlError(f"manifest {path} does not exist; check data.manifest")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MedtlError(f"manifest {path} is not a readable CSV ({exc}); see data_manifests/README.md") from exc
    for column in required:
        if column not in frame.columns:
            raise MedtlError(
                f"manifest {path} has no column '{column}'; it needs {', '.join(required)} "
                "(see data_manifests/README.md)")
        empty = frame.index[frame[column].str.strip() == ""]
        if len(empty):
            raise MedtlError(f"manifest {path} row {empty[0] + 2} has an empty '{column}'; fill it in or drop the row")
    if frame.empty:
        raise MedtlError(f"manifest {path} lists no images; add rows or point data.manifest elsewhere")
    base = Path(root).expanduser() if root else path.parent
    frame["path"] = [_resolve_row(p, path, row, base, allow_outside_root) for row, p in enumerate(frame["path"], 2)]
    _check_files_exist(frame["path"], source=str(path))
    if "split" in frame.columns:
        frame["split"] = [_normalise_split(s, path) for s in frame["split"]]
    return frame


def write_manifest(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` atomically as CSV, with paths relative to the manifest's folder where possible."""
    path = Path(path)
    out = frame.copy()
    out["path"] = [_relative_if_inside(p, path.parent) for p in out["path"]]
    return write_csv_atomic(out, path)


def manifest_from_tree(root: str | Path, patient_id_patterns: Sequence[str] = (),
                       allow_outside_root: bool = False) -> pd.DataFrame:
    """Build a manifest from a class-per-folder tree; the files it does not use are logged (see :func:`scan_tree`)."""
    frame, inventory = scan_tree(root, patient_id_patterns, allow_outside_root)
    if inventory.others:
        log.warning("%s: %s", root, inventory.summary())
    return frame


def scan_tree(root: str | Path, patient_id_patterns: Sequence[str] = (), allow_outside_root: bool = False,
              scan: FolderScanner = scan_folder) -> tuple[pd.DataFrame, Inventory]:
    """A manifest frame from a class-per-folder tree, and the inventory of every file under it.

    Two layouts are recognised: ``root/<CLASS>/<image>`` and ``root/<split>/<CLASS>/<image>``
    (split folders named train/val/test or their usual aliases). Patient ids come from the file
    name through ``patient_id_patterns`` (first regex whose group 1 matches); an image no pattern
    matches is its own patient. Files outside class folders, in sub-folders of a class folder, hidden
    or not images are skipped with a reason; FIFOs, devices, bad links and links leaving ``root`` are refused.
    ``scan`` says which entries of a class folder are inputs (an image pipeline's ``scan_folder``: a volume
    pipeline takes DICOM series sub-folders too).
    """
    root = Path(root)
    if not root.is_dir():
        raise MedtlError(f"data root {root} is not a folder; set data.root to a class-per-folder tree")
    inventory = _loose_files(root, root, "not inside a class folder", allow_outside_root, scan)
    class_dirs = _subfolders(root, inventory)
    split_dirs = [d for d in class_dirs if d.name.lower() in _SPLIT_ALIASES]
    rows: list[dict[str, str | None]] = []
    if split_dirs and len(split_dirs) == len(class_dirs):
        for split_dir in split_dirs:
            inventory.extend(_loose_files(split_dir, root, "not inside a class folder", allow_outside_root, scan))
            rows += _rows_for_classes(split_dir, _SPLIT_ALIASES[split_dir.name.lower()], patient_id_patterns,
                                      root, allow_outside_root, inventory, scan)
    else:
        rows = _rows_for_classes(root, None, patient_id_patterns, root, allow_outside_root, inventory, scan)
    if not rows:
        raise MedtlError(
            f"data root {root} holds no images ({', '.join(IMAGE_SUFFIXES)}) in class folders; "
            f"expected root/<CLASS>/<image> or root/<split>/<CLASS>/<image> ({inventory.summary()})")
    frame = pd.DataFrame(rows)
    if frame["split"].isna().all():
        frame = frame.drop(columns="split")
    return frame, inventory


def list_images(folder: Path, allow_outside_root: bool = True) -> list[Path]:
    """Image files directly inside ``folder`` (by content; see :func:`scan_folder`); the rest is logged."""
    inventory = scan_folder(folder, folder, allow_outside_root)
    if inventory.others and inventory.used:
        log.warning("%s: %s", folder, inventory.summary())
    return inventory.used


def patient_id_from_name(file_name: str, patterns: Sequence[str]) -> str:
    """The patient id encoded in ``file_name`` by the first matching pattern, else the file's stem (a NIfTI
    file's name without ``.nii.gz``; for ``<folder>#series-<n>``, the folder: a study's series are one patient)."""
    file_name = file_name.rpartition(SERIES_MARK)[0] or file_name
    for pattern in patterns:
        match = re.search(pattern, file_name)
        if match:
            return match.group(1)
    lowered = file_name.lower()
    for suffix in (".nii.gz", ".nii"):
        if lowered.endswith(suffix):
            return file_name[:-len(suffix)]
    return Path(file_name).stem


def pseudonymise_patient_ids(frame: pd.DataFrame, key: str | bytes) -> pd.DataFrame:
    """Replace ``patient_id`` with ``p-`` + 16 hex digits of HMAC-SHA256(key, id).

    The same key maps the same patient to the same pseudonym, so splits stay patient-disjoint across
    manifests; without the key the ids cannot be recovered by hashing guesses.
    """
    key_bytes = key.encode() if isinstance(key, str) else key
    if len(key_bytes) < MIN_KEY_BYTES:
        raise MedtlError(f"the pseudonymisation key is {len(key_bytes)} bytes; use at least {MIN_KEY_BYTES} random bytes "
                         f"(e.g. export {PSEUDONYM_KEY_ENV}=$(openssl rand -hex 32))")
    pseudonyms = {pid: pseudonym(key_bytes, pid) for pid in frame["patient_id"].unique()}
    return frame.assign(patient_id=frame["patient_id"].map(pseudonyms))


def _rows_for_classes(folder: Path, split: str | None, patterns: Sequence[str], root: Path,
                      allow_outside_root: bool, inventory: Inventory,
                      scan: FolderScanner = scan_folder) -> list[dict[str, str | None]]:
    rows: list[dict[str, str | None]] = []
    for class_dir in _subfolders(folder, inventory):
        found = scan(class_dir, root, allow_outside_root)
        inventory.extend(found)
        accounted = {str(p).partition(SERIES_MARK)[0] for p in found.used} | {o["path"] for o in found.others}
        for sub in _subfolders(class_dir, inventory):
            if str(sub) in accounted:
                continue
            inventory.add(sub, SKIPPED, f"a folder inside class folder '{class_dir.name}'; only files directly "
                          "inside a class folder are read")
        rows += [{"path": os.path.abspath(image), "label": class_dir.name,
                  "patient_id": patient_id_from_name(image.name, patterns), "split": split} for image in found.used]
    return rows


def _subfolders(folder: Path, inventory: Inventory) -> list[Path]:
    """Visible sub-folders (hidden ones are listed as skipped), sorted by name."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name)):
        if entry.is_dir(follow_symlinks=False):  # linked folders are reported by scan_folder, not followed
            if entry.name.startswith("."):
                inventory.add(Path(entry.path), SKIPPED, "hidden folder")
            else:
                found.append(Path(entry.path))
    return found


def _loose_files(folder: Path, root: Path, reason: str, allow_outside_root: bool,
                 scan: FolderScanner = scan_folder) -> Inventory:
    """Files directly in ``folder`` where a class folder was expected: all reported, none used."""
    inventory = Inventory()
    loose = scan(folder, root, allow_outside_root)
    for entry in loose.others:
        if not _is_subfolder(entry["path"], folder):  # class folders are read as such
            inventory.others.append(entry)
    for path in loose.used:
        if not _is_subfolder(path, folder):
            inventory.add(path, SKIPPED, reason)
    return inventory


def _is_subfolder(path: str | Path, folder: Path) -> bool:
    """Whether an inventory entry is a folder inside ``folder`` (a volume scanner lists series folders)."""
    entry = Path(str(path).partition(SERIES_MARK)[0])
    return entry != folder and entry.parent == folder and entry.is_dir()


def _resolve_row(path_text: str, manifest: Path, row: int, base: Path, allow_outside_root: bool) -> str:
    """A manifest cell as an absolute path (links left unresolved); refused by name when it must not be read."""
    folder_text, mark, series = path_text.partition(SERIES_MARK)
    path = Path(folder_text).expanduser()
    absolute = Path(os.path.abspath(path if path.is_absolute() else manifest.parent / path))
    if absolute.is_dir() and not absolute.is_symlink():  # a DICOM series folder (volume pipelines)
        outside = not (path.is_absolute() or allow_outside_root or inside_folder(absolute, base))
        if outside:
            raise MedtlError(f"manifest {manifest} row {row}: {describe_path(absolute)}: resolves outside the data "
                             f"folder {base}; move it inside or set data.allow_outside_root=true")
        return f"{absolute}{mark}{series}"
    reason = check_path(absolute, None if path.is_absolute() else base, allow_outside_root)
    if reason is not None and not reason.startswith("cannot be accessed"):  # missing files: one summary below
        raise MedtlError(f"manifest {manifest} row {row}: {describe_path(absolute)}: {reason}")
    return str(absolute)


def _relative_if_inside(path_text: str, base: Path) -> str:
    folder, mark, series = path_text.partition(SERIES_MARK)
    path, base = Path(folder).resolve(), base.resolve()
    return (str(path.relative_to(base)) if path.is_relative_to(base) else str(path)) + mark + series


def _check_files_exist(paths: pd.Series, source: str) -> None:
    missing = [p for p in paths if not Path(str(p).partition(SERIES_MARK)[0]).exists()]
    if missing:
        raise MedtlError(f"{len(missing)} image(s) listed in {source} do not exist, first: {missing[0]}; "
                         "fix the paths (relative paths are relative to the manifest) or remove the rows")


def _normalise_split(value: str, source: Path) -> str:
    if value.strip() == "":
        return "train"
    key = value.strip().lower()
    if key not in _SPLIT_ALIASES:
        raise MedtlError(f"manifest {source} has split '{value}'; use one of {', '.join(SPLIT_NAMES)} or leave it empty")
    return _SPLIT_ALIASES[key]
