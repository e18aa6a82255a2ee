"""Every file under an input folder accounted for: used as an image, or skipped or refused with a reason.

What a file is comes from its first bytes, not its name: extensionless DICOM (``IM000001``, the usual
name on a scanner's CD), gzipped DICOM (``.dcm.gz``) and misnamed files are recognised; a NIfTI volume,
a text file or a hidden file is skipped by name and counted. Before any byte is read, a path is checked:
FIFOs and devices (which would hang or never end), dangling links, link loops, names that are not valid
UTF-8 and links that leave the data's folder are *refused*: listed with the reason, never opened.
"""
from __future__ import annotations

import errno
import gzip
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medtl.errors import MedtlError

__all__ = ["Inventory", "sniff", "check_path", "inside_folder", "scan_folder", "describe_path", "require_readable", "IMAGE_SUFFIXES",
           "REFUSED", "SKIPPED"]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PIL_MAGIC = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpeg", b"II*\x00": "tiff", b"MM\x00*": "tiff", b"BM": "bmp"}
GZIP_MAGIC = b"\x1f\x8b"
NIFTI_MAGICS = (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"ni2\x00")
HEADER_BYTES = 348  # enough for the DICOM preamble + "DICM" (132) and the NIfTI-1 magic (344..348)
REFUSED = "refused"  # the status of a path that was never opened
SKIPPED = "skipped"


@dataclass
class Inventory:
    """The images of a folder and every other entry with its status (``skipped``/``refused``) and reason."""

    used: list[Path] = field(default_factory=list)
    others: list[dict[str, str]] = field(default_factory=list)

    def add(self, path: Path, status: str, reason: str) -> None:
        self.others.append({"path": describe_path(path), "status": status, "reason": reason})

    def extend(self, other: Inventory) -> None:
        self.used += other.used
        self.others += other.others

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.others, columns=["path", "status", "reason"])

    def counts(self) -> dict[str, int]:
        refused = sum(o["status"] == REFUSED for o in self.others)
        return {"inputs.found": len(self.used) + len(self.others), "inputs.used": len(self.used),
                "inputs.skipped": len(self.others) - refused, "inputs.refused": refused}

    def summary(self) -> str:
        counts = self.counts()
        reasons = pd.Series([o["reason"] for o in self.others]).value_counts().head(3)
        detail = "; ".join(f"{n} x {reason}" for reason, n in reasons.items())
        return (f"{counts['inputs.found']} file(s) found: {counts['inputs.used']} used, {counts['inputs.skipped']} "
                f"skipped, {counts['inputs.refused']} refused" + (f" ({detail})" if detail else ""))


def describe_path(path: Path | str) -> str:
    """``path`` as printable text: bytes that are not UTF-8 are shown as ``\\xNN`` escapes."""
    return os.fsencode(str(path)).decode("utf-8", errors="backslashreplace")


def check_path(path: Path, root: Path | None = None, allow_outside_root: bool = True) -> str | None:
    """Why ``path`` must not be opened (a refusal reason), or ``None`` when it is a regular file to read.

    Only ``lstat``/``stat`` are called: a FIFO, a device or a link loop is never opened.
    """
    try:
        os.fsencode(str(path)).decode("utf-8")
    except UnicodeDecodeError:
        return "its name is not valid UTF-8; rename the file"
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if os.path.islink(path):
            return "broken symbolic link (its target does not exist)"
        return f"cannot be accessed ({exc.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file ({_file_type(info.st_mode)}); medtl never opens one"
    if root is not None and not allow_outside_root and not _inside(path, root):
        return (f"resolves outside the data folder {root}; move it inside or set data.allow_outside_root=true")
    return None


def sniff(path: Path | str) -> str:
    """What the file's first bytes say it is: ``dicom``, ``dicom.gz``, ``png``/``jpeg``/``tiff``/``bmp``,
    ``nifti``, ``gzip``, ``empty`` or ``unknown``. Call :func:`check_path` first."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
    if not head:
        return "empty"
    if head.startswith(GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as handle:
                inner = _kind_of(handle.read(HEADER_BYTES))
        except (OSError, EOFError):
            return "gzip"
        return {"dicom": "dicom.gz", "nifti": "nifti"}.get(inner, "gzip")
    return _kind_of(head)


def _kind_of(head: bytes) -> str:
    if head[128:132] == b"DICM":
        return "dicom"
    if head[344:348] in NIFTI_MAGICS or head[4:8] in NIFTI_MAGICS:
        return "nifti"
    for magic, kind in PIL_MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[:2] in (b"\x08\x00", b"\x02\x00") and len(head) >= 8:  # a DICOM data set written without the preamble
        return "dicom"
    return "unknown"


def scan_folder(folder: Path, root: Path | None = None, allow_outside_root: bool = True) -> Inventory:
    """Classify every entry directly inside ``folder`` (sub-folders are the caller's business).

    Images (by content, or by an image suffix when the content is not recognised, so a corrupt image
    is read and reported as unreadable rather than dropped) are ``used``; the rest is skipped or refused.
    """
    inventory = Inventory()
    for entry in sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name)):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            continue
        if entry.is_symlink() and os.path.isdir(path):
            inventory.add(path, SKIPPED, "a link to a folder; links to folders are not followed")
            continue
        reason = check_path(path, root, allow_outside_root)
        if reason is not None:
            inventory.add(path, REFUSED, reason)
        elif entry.name.startswith("."):
            inventory.add(path, SKIPPED, "hidden file")
        else:
            _classify(path, inventory)
    return inventory


def _classify(path: Path, inventory: Inventory) -> None:
    kind = sniff(path)
    if kind in ("dicom", "dicom.gz", *PIL_MAGIC.values()) or path.suffix.lower() in IMAGE_SUFFIXES:
        inventory.used.append(path)
    elif kind == "nifti":
        inventory.add(path, SKIPPED, "a NIfTI volume; this pipeline reads 2D images (DICOM, PNG, JPEG, TIFF, BMP)")
    elif kind == "empty":
        inventory.add(path, SKIPPED, "empty file (0 bytes)")
    else:
        inventory.add(path, SKIPPED, f"not an image ({'gzip without DICOM inside' if kind == 'gzip' else 'unrecognised content'})")


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a plain file"


def inside_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` (links resolved) lies inside ``root``."""
    return _inside(path, root)


def _inside(path: Path, root: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(root)))
    except (OSError, RuntimeError):
        return False


def require_readable(path: str | Path, what: str = "image") -> None:
    """Raise one :class:`MedtlError` line if ``path`` must not be opened (see :func:`check_path`)."""
    reason = check_path(Path(path))
    if reason is not None:
        raise MedtlError(f"{what} {describe_path(path)}: {reason}; fix or remove it")
