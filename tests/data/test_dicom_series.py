"""DICOM series assembly: order by position, split by SeriesInstanceUID, gaps and repeats refused, real MR tags."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medtl.data.dicom_series import find_series, resolve_series
from medtl.data.volume_inputs import scan_volume_folder
from medtl.data.volume_shift import write_dicom_series
from medtl.data.volumes import LoadVolume
from medtl.errors import MedtlError


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """A (6, 5, 7) uint16 volume whose voxels encode their index, LPS-stored with anisotropic spacing."""
    data = (np.arange(6 * 5 * 7).reshape(6, 5, 7) * 10).astype(np.uint16)
    affine = np.diag([-0.8, -0.9, 3.0, 1.0])
    affine[:3, 3] = [40.0, 30.0, -20.0]
    return data, affine


def test_series_is_ordered_by_position_not_file_name(tmp_path: Path) -> None:
    data, affine = _volume()
    folder = write_dicom_series(data, affine, tmp_path / "series")  # IM0001 is the last slice
    (series,) = find_series(folder)
    assert [Path(f).name for f in series.files] == [f"IM{7 - k:04d}" for k in range(7)]
    assert np.all(np.diff(series.positions) > 0)
    volume = LoadVolume()(str(folder))
    expected = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    np.testing.assert_allclose(np.asarray(volume)[0], expected.get_fdata(), atol=1e-3)
    np.testing.assert_allclose(np.asarray(volume.affine), expected.affine, atol=1e-3)


def test_a_folder_with_two_series_is_split_by_series_uid(tmp_path: Path) -> None:
    data, affine = _volume()
    write_dicom_series(data, affine, tmp_path / "a", series_number=3)
    write_dicom_series(data[::-1] + 1, affine, tmp_path / "b", series_number=7)
    study = tmp_path / "study"
    study.mkdir()
    for sub in ("a", "b"):
        for path in (tmp_path / sub).iterdir():
            shutil.copy(path, study / f"{sub}_{path.name}")
    names = [s.name for s in find_series(study)]
    assert names == [f"{study}#series-3", f"{study}#series-7"]
    assert [str(p) for p in scan_volume_folder(tmp_path).used] == [str(tmp_path / "a"), str(tmp_path / "b"), *names]
    first, second = (np.asarray(LoadVolume()(name))[0] for name in names)
    np.testing.assert_allclose(second, first[::-1] + 1)  # each series is its own volume (flipped along R-L)
    with pytest.raises(MedtlError, match="holds 2 DICOM series"):
        resolve_series(study)


def test_a_missing_slice_is_a_clear_error(tmp_path: Path) -> None:
    data, affine = _volume()
    folder = write_dicom_series(data, affine, tmp_path / "series")
    (folder / "IM0004").unlink()
    with pytest.raises(MedtlError, match=r"6\.00 mm between slices .* 3\.00 mm apart: a slice is missing"):
        LoadVolume()(str(folder))
    shutil.copy(folder / "IM0005", folder / "IM0005_copy")
    with pytest.raises(MedtlError, match="at the same position"):
        resolve_series(folder)


def test_real_mr_file_geometry_gives_the_affine(tmp_path: Path) -> None:
    """pydicom's MR_small.dcm (a real scanner's tags), stacked into three slices along its normal."""
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    row, column = np.array(source.ImageOrientationPatient[:3], float), np.array(source.ImageOrientationPatient[3:], float)
    normal, origin = np.cross(row, column), np.array(source.ImagePositionPatient, float)
    for k in (2, 0, 1):
        copy = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        copy.ImagePositionPatient = [float(v) for v in origin + 2.5 * k * normal]
        copy.InstanceNumber = 10 - k  # the reverse of the position order
        copy.save_as(tmp_path / f"slice{k}.dcm")
    volume = LoadVolume(axcodes="LPS")(str(tmp_path))
    spacing = [float(v) for v in source.PixelSpacing]
    assert tuple(volume.shape) == (1, source.Columns, source.Rows, 3)
    ras = np.asarray(volume.affine)
    np.testing.assert_allclose(np.sqrt((ras[:3, :3] ** 2).sum(axis=0)), [spacing[1], spacing[0], 2.5], atol=1e-4)
    np.testing.assert_allclose(np.asarray(volume)[0, :, :, 0], source.pixel_array.T.astype(np.float32)
                               * float(getattr(source, "RescaleSlope", 1)) + float(getattr(source, "RescaleIntercept", 0)))
