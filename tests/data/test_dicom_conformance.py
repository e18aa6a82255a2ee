"""Our DICOM reader against pydicom's own decoding, on every test file pydicom ships.

Covers implicit/explicit VR, big endian, RLE, JPEG baseline/lossless, JPEG-LS and JPEG 2000
files, colour and multi-frame files. Files without pixel data must be refused by name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut

from medtl.data.readers import DicomOptions, LoadRadiograph
from medtl.errors import MedtlError



def local_test_files() -> list[str]:
    """pydicom's bundled files plus the pydicom-data package's (dev extra); never downloaded at test time."""
    folders = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store  # the import name of the pydicom-data package

        folders.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return sorted(str(p) for folder in folders for p in folder.rglob("*.dcm"))


FILES = local_test_files()
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def pydicom_reference(path: str) -> np.ndarray | None:
    """Frame 0 after the modality LUT, MONOCHROME1 inverted, colour as BT.601 luma.

    None when the file must be refused: pydicom cannot decode it, or it is a Segmentation (a mask, not an image).
    """
    ds = pydicom.dcmread(path, force=True)
    if "SegmentSequence" in ds:
        return None
    try:
        pixels = ds.pixel_array
    except Exception:  # noqa: BLE001 - pydicom itself cannot decode it: our reader must refuse it
        return None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if ds.PhotometricInterpretation in COLOUR or ds.PhotometricInterpretation == "PALETTE COLOR":
        return pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1" and "ModalityLUTSequence" in ds:
        top = 2 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
        values = top - values
    elif ds.PhotometricInterpretation == "MONOCHROME1":
        bits, signed = ds.BitsStored, ds.PixelRepresentation == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
        values = (low * slope + intercept) + (high * slope + intercept) - values
    return values


def has_pixels(path: str) -> bool:
    return "PixelData" in pydicom.dcmread(path, force=True)


IMAGE_FILES = [f for f in FILES if has_pixels(f)]
NON_IMAGE_FILES = [f for f in FILES if not has_pixels(f)]


@pytest.mark.parametrize("path", IMAGE_FILES, ids=lambda p: Path(p).name)
def test_reader_matches_pydicom_or_refuses_by_name(path: str) -> None:
    loader = LoadRadiograph(DicomOptions(voi="none"))
    reference = pydicom_reference(path)
    if reference is None:
        with pytest.raises(MedtlError, match=Path(path).name):
            loader(path)
        return
    ours = np.asarray(loader(path))[0]  # (1, H, W) -> (H, W)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-3 * max(1.0, np.abs(reference).max()))


# pydicom's deliberately broken files (truncated, bad VR, no transfer syntax, corrupt JPEG / J2K
# streams, a nested private sequence with no decodable pixels) and two Segmentation objects.
EXPECTED_REFUSED = {
    "JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "MR_truncated.dcm", "badVR.dcm",
    "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm", "liver_1frame.dcm", "liver_expb_1frame.dcm",
    # pydicom-data: corrupt streams, Segmentations, and a pre-standard file with no transfer syntax
    "JPEG-LL.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm", "bad_sequence.dcm", "liver.dcm",
    "liver_expb.dcm", "OT-PAL-8-face.dcm",
}


def test_every_decodable_file_decodes_including_compressed_syntaxes() -> None:
    decoded = [Path(f).name for f in IMAGE_FILES if pydicom_reference(f) is not None]
    refused = {Path(f).name for f in IMAGE_FILES} - set(decoded)
    assert refused <= EXPECTED_REFUSED, f"newly refused: {sorted(refused - EXPECTED_REFUSED)}"
    assert len(decoded) >= 50
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_gdcm.dcm",
                 "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"):
        assert name in decoded, f"{name} should decode with the pylibjpeg / pyjpegls plugins installed"


@pytest.mark.parametrize("path", NON_IMAGE_FILES, ids=lambda p: Path(p).name)
def test_files_without_pixel_data_are_refused(path: str) -> None:
    with pytest.raises(MedtlError, match=Path(path).name):
        LoadRadiograph()(path)


def test_windowing_is_applied_in_auto_mode(tmp_path: Path) -> None:
    from medtl.data.demo import write_dx_dicom

    path = tmp_path / "w.dcm"
    image = np.tile(np.linspace(0, 1, 64), (32, 1))  # (32, 64) ramp, 0..4095 stored
    write_dx_dicom(path, image, "P", monochrome1=True, rescale=(1.0, 0.0))
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 2048, 1024
    ds.save_as(path)
    raw = np.asarray(LoadRadiograph(DicomOptions(voi="none"))(str(path)))[0]
    windowed = np.asarray(LoadRadiograph(DicomOptions(voi="auto"))(str(path)))[0]
    np.testing.assert_allclose(raw[0], np.round(image[0] * 4095), atol=1)  # bone bright, exact values
    assert windowed[0, 0] == windowed[0, 10] == 0  # below the window: clipped to the bottom
    assert windowed[0, -1] == windowed[0, -10] == 4095  # above: clipped to the top
    assert np.all(np.diff(windowed[0]) >= 0)  # still bright = dense after the MONOCHROME1 inversion


def test_real_voi_lut_file_in_auto_mode_matches_pydicom() -> None:
    data_store = pytest.importorskip("data_store")  # pydicom-data, a dev extra
    path = Path(data_store.__file__).parent / "data" / "vlut_04.dcm"
    ds = pydicom.dcmread(path)
    assert "VOILUTSequence" in ds
    from pydicom.pixels import apply_voi_lut

    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=True)
    ours = np.asarray(LoadRadiograph(DicomOptions(voi="auto"))(str(path)))[0]
    np.testing.assert_allclose(ours, expected, atol=1e-3)
    assert not np.allclose(ours, np.asarray(LoadRadiograph(DicomOptions(voi="none"))(str(path)))[0])


def test_palette_colour_image_goes_through_its_palette(tmp_path: Path) -> None:
    data_store = pytest.importorskip("data_store")
    ds = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "OT-PAL-8-face.dcm", force=True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # repair the pre-standard header
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path = tmp_path / "palette.dcm"
    ds.save_as(path, enforce_file_format=True)
    ours = np.asarray(LoadRadiograph()(str(path)))[0]
    rgb = apply_color_lut(pydicom.dcmread(path).pixel_array, ds).astype(np.float32)
    np.testing.assert_allclose(ours, rgb @ np.array([0.299, 0.587, 0.114], np.float32), rtol=1e-5)
    assert not np.allclose(ours, pydicom.dcmread(path).pixel_array)  # not the raw palette indices


def test_window_option_prefers_the_window_over_a_voi_lut(tmp_path: Path) -> None:
    data_store = pytest.importorskip("data_store")
    ds = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "vlut_04.dcm")
    ds.WindowCenter, ds.WindowWidth = 1000, 400  # give the VOI LUT file a window as well
    path = tmp_path / "both.dcm"
    ds.save_as(path)
    from pydicom.pixels import apply_voi_lut

    modality = apply_modality_lut(ds.pixel_array, ds)
    for option, prefer_lut in (("auto", True), ("window", False)):
        ours = np.asarray(LoadRadiograph(DicomOptions(voi=option))(str(path)))[0]
        np.testing.assert_allclose(ours, apply_voi_lut(modality, ds, prefer_lut=prefer_lut), atol=1e-3)
