from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medtl.data.demo import write_dx_dicom
from medtl.data.readers import LoadRadiograph
from medtl.errors import MedtlError


def reference_image(seed: int = 0) -> np.ndarray:
    """(H, W) in [0, 1] with a bright top-left quadrant, so orientation is checkable."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.1, 0.4, size=(48, 64))
    image[:24, :32] += 0.5
    return image


@pytest.mark.parametrize("monochrome1", [False, True])
@pytest.mark.parametrize("rescale", [(1.0, 0.0), (2.0, -1024.0)])
def test_dicom_comes_out_in_stored_units_bone_bright(tmp_path: Path, monochrome1: bool, rescale) -> None:
    image = reference_image()
    path = tmp_path / "x.dcm"
    write_dx_dicom(path, image, "P1", monochrome1=monochrome1, rescale=rescale)
    loaded = LoadRadiograph()(str(path))
    assert tuple(loaded.shape) == (1, 48, 64)  # (C, H, W), rows first
    assert loaded.dtype.is_floating_point
    expected = np.round(image * 4095)
    np.testing.assert_allclose(np.asarray(loaded)[0], expected, atol=rescale[0])
    assert np.asarray(loaded)[0, :24, :32].mean() > np.asarray(loaded)[0, 24:, 32:].mean() + 1000


def test_png_is_read_grey_rows_first(tmp_path: Path, write_png) -> None:
    path = write_png(tmp_path / "a.png", shape=(30, 50))
    loaded = LoadRadiograph()(str(path))
    assert tuple(loaded.shape) == (1, 30, 50)
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(loaded)[0], np.asarray(Image.open(path), dtype=np.float32))


def test_rgb_jpeg_becomes_one_channel(tmp_path: Path) -> None:
    from PIL import Image
    path = tmp_path / "c.jpg"
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(path)
    assert tuple(LoadRadiograph()(str(path)).shape) == (1, 20, 30)


def test_demo_monochrome1_files_are_the_right_way_up(demo_manifest: Path) -> None:
    frame = pd.read_csv(demo_manifest)
    loader = LoadRadiograph()
    seen = set()
    for rel in frame["path"][:30]:
        path = demo_manifest.parent / rel
        seen.add(pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation)
        image = np.asarray(loader(str(path)))[0]
        h, w = image.shape
        spine = image[h // 3: 2 * h // 3, w // 2 - 2: w // 2 + 2].mean()
        lung = image[h // 3: 2 * h // 3, w // 5: w // 5 + 4].mean()
        assert spine > lung, f"{rel}: spine should be brighter than lung"
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


def test_non_dicom_file_named_dcm_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"this is not a DICOM file at all" * 10)
    with pytest.raises(MedtlError, match=r"fake\.dcm.*(not an image|cannot read)|cannot read image .*fake\.dcm"):
        LoadRadiograph()(str(path))


def test_dicom_without_pixel_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nopix.dcm"
    write_dx_dicom(path, reference_image(), "P1", monochrome1=False, rescale=(1.0, 0.0))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(MedtlError, match="nopix.dcm"):
        LoadRadiograph()(str(path))


def test_truncated_png_is_refused(tmp_path: Path, write_png) -> None:
    path = write_png(tmp_path / "t.png", shape=(64, 64))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(MedtlError, match=r"t\.png"):
        LoadRadiograph()(str(path))


@pytest.mark.parametrize("name", ["empty.dcm", "empty.png"])
def test_zero_byte_files_are_refused_by_name(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(MedtlError, match=name.replace(".", r"\.")):
        LoadRadiograph()(str(path))
