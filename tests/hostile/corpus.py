"""A hostile-input corpus, generated on demand: every file a careless export, a scanner's CD or an attacker
might put in front of medtl, with what medtl must do with it.

Each :class:`Case` is one entry of a folder. ``scan`` is what listing the folder must report (``used``,
``skipped`` or ``refused``, with a reason matching ``reason``); ``read`` is what decoding it must give: ``ok``
(a finite ``(1, H, W)`` image) or a regex of the one-line :class:`~medtl.errors.MedtlError` it must raise.
Used by ``tests/hostile`` and by ``benchmarks/hostile_inputs.py`` (the README's reliability figures).
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import RLELossless

from medtl.data.demo import dx_dataset, write_dx_dicom

__all__ = ["Case", "CASES", "build_corpus", "good_image"]


@dataclass(frozen=True)
class Case:
    name: str  # the entry's file name (bytes for a name that is not UTF-8)
    write: Callable[[Path, Path], None]  # (path of the entry, folder outside the corpus) -> None
    scan: str  # used | skipped | refused
    reason: str = ""  # regex of the scan reason (skipped/refused)
    read: str = "ok"  # ok | regex of the read error | "-" (never read: refused or skipped by the scan)


def good_image(seed: int = 0, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.1, 0.5, size=shape)
    image[: shape[0] // 2, : shape[1] // 2] += 0.4
    return image


def _dicom(path: Path, _: Path) -> None:
    write_dx_dicom(path, good_image(), "P1", monochrome1=False, rescale=(1.0, 0.0))


def _gz_dicom(path: Path, outside: Path) -> None:
    _dicom(outside / "plain.dcm", outside)
    path.write_bytes(gzip.compress((outside / "plain.dcm").read_bytes()))


def _png(path: Path, _: Path) -> None:
    Image.fromarray((good_image() * 255).astype(np.uint8)).save(path, format="PNG")


def _png16(path: Path, _: Path) -> None:
    Image.fromarray((good_image() * 60000).astype(np.uint16)).save(path, format="PNG")


def _float_tiff(values: float | None) -> Callable[[Path, Path], None]:
    def write(path: Path, _: Path) -> None:
        image = good_image().astype(np.float32)
        if values is None:
            image[:] = np.nan
        else:
            image[3, 4] = values
        Image.fromarray(image, mode="F").save(path, format="TIFF")

    return write


def _truncated(path: Path, outside: Path) -> None:
    _dicom(outside / "whole.dcm", outside)
    data = (outside / "whole.dcm").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bomb_dicom(path: Path, _: Path) -> None:
    """A 40000 x 40000 16-bit RLE image in a few hundred kilobytes: 3.2 GB once decoded."""
    ds = dx_dataset("P1")
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows = ds.Columns = 40_000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    segment = bytes([0x81, 0x00]) * 1000  # RLE runs of zeros, far too short for the declared size: never decoded
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = pydicom.encaps.encapsulate([header + segment + segment])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)


def _bomb_png(path: Path, _: Path) -> None:
    """A PNG header declaring 60000 x 60000 pixels over a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
                     + chunk(b"IEND", b""))


def _no_pixels(path: Path, _: Path) -> None:
    dx_dataset("P1").save_as(path, enforce_file_format=True)


def _float_pixel_dicom(path: Path, _: Path) -> None:
    ds = dx_dataset("P1")
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 48, 64, 1, "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.FloatPixelData = good_image().astype(np.float32).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _nifti(path: Path, _: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)), str(path))


def _bytes(data: bytes) -> Callable[[Path, Path], None]:
    return lambda path, _: path.write_bytes(data)


def _fifo(path: Path, _: Path) -> None:
    os.mkfifo(path)


def _dangling(path: Path, outside: Path) -> None:
    path.symlink_to(outside / "does-not-exist.png")


def _loop(path: Path, _: Path) -> None:
    partner = path.with_name(path.name + ".partner")
    path.symlink_to(partner.name)
    partner.symlink_to(path.name)


def _escaping_link(path: Path, outside: Path) -> None:
    _png(outside / "elsewhere.png", outside)
    path.symlink_to(outside / "elsewhere.png")


def _misnamed(writer: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    return lambda path, outside: writer(path, outside)


CASES: tuple[Case, ...] = (
    Case("good.dcm", _dicom, "used"),
    Case("IM000001", _dicom, "used"),  # extensionless DICOM, as on a scanner's CD
    Case("image.dcm.gz", _gz_dicom, "used"),
    Case("good.png", _png, "used"),
    Case("sixteen_bit.png", _png16, "used"),
    Case("png_named.jpg", _misnamed(_png), "used"),
    Case("dicom_named.png", _misnamed(_dicom), "used"),
    Case("float_pixels.dcm", _float_pixel_dicom, "used"),
    Case("empty.dcm", _bytes(b""), "used", read=r"cannot read image .*empty\.dcm: the file is empty \(0 bytes\)"),
    Case("truncated.dcm", _truncated, "used", read=r"cannot read image .*truncated\.dcm"),
    Case("text.dcm", _bytes(b"patient list\nnothing to see\n"), "used",
         read=r"cannot read image .*text\.dcm: it is neither DICOM \(no DICM marker\) nor PNG"),
    Case("corrupt.png", _bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "used", read=r"cannot read image .*corrupt\.png"),
    Case("bomb.dcm", _bomb_dicom, "used", read=r"bomb\.dcm declares 1,600,000,000 pixels .* not decoded"),
    Case("bomb.png", _bomb_png, "used", read=r"bomb\.png declares 3,600,000,000 pixels, over .* it was not decoded"),
    Case("nan.tiff", _float_tiff(float("nan")), "used", read=r"nan\.tiff has NaN or infinite pixels"),
    Case("inf.tiff", _float_tiff(float("inf")), "used", read=r"inf\.tiff has NaN or infinite pixels"),
    Case("all_nan.tiff", _float_tiff(None), "used", read=r"all_nan\.tiff has NaN or infinite pixels"),
    Case("no_pixels.dcm", _no_pixels, "used", read=r"no_pixels\.dcm has no Pixel Data"),
    Case("empty_no_suffix", _bytes(b""), "skipped", r"empty file \(0 bytes\)", "-"),
    Case("notes.txt", _bytes(b"radiology report\n"), "skipped", r"not an image \(unrecognised content\)", "-"),
    Case("archive.gz", _bytes(gzip.compress(b"just text")), "skipped", r"gzip without DICOM inside", "-"),
    Case("volume.nii.gz", _nifti, "skipped", r"a NIfTI volume", "-"),
    Case(".hidden.dcm", _dicom, "skipped", r"hidden file", "-"),
    Case("dangling.png", _dangling, "refused", r"broken symbolic link", "-"),
    Case("loop.png", _loop, "refused", r"symbolic link loop", "-"),
    Case("fifo.dcm", _fifo, "refused", r"not a regular file \(a FIFO\)", "-"),
    Case("escapes.png", _escaping_link, "refused", r"resolves outside the data folder", "-"),
    Case(os.fsdecode(b"name\xff\xfe.png"), _png, "refused", r"its name is not valid UTF-8", "-"),
)


def build_corpus(folder: Path, outside: Path) -> list[tuple[Case, Path]]:
    """Write every case into ``folder`` (helpers that must lie elsewhere go to ``outside``); return (case, path)."""
    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    written = []
    for case in CASES:
        path = folder / case.name
        case.write(path, outside)
        written.append((case, path))
        if case.name == "loop.png":  # its partner link is a second refused entry of the same kind
            written.append((Case("loop.png.partner", _loop, "refused", r"symbolic link loop", "-"),
                            path.with_name("loop.png.partner")))
    return written
