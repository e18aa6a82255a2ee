"""NIfTI (nibabel's own test files and generated volumes) and DICOM series folders."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medtl.data.volumes import LoadVolume
from medtl.errors import MedtlError

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "standard.nii.gz", "functional.nii"])
def test_nibabel_files_load_in_ras_with_spacing(name: str) -> None:
    path = NIBABEL_DATA / name
    image = nib.load(path)
    volume = LoadVolume()(str(path))
    canonical = nib.as_closest_canonical(image)  # nibabel's own RAS reorientation
    expected = np.asarray(canonical.get_fdata(), dtype=np.float32)
    if expected.ndim == 4:
        expected = np.moveaxis(expected, -1, 0)  # (X, Y, Z, T) -> (T, X, Y, Z)
    else:
        expected = expected[None]  # (1, X, Y, Z)
    np.testing.assert_allclose(np.asarray(volume), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(volume.affine), canonical.affine, atol=1e-4)
    np.testing.assert_allclose(volume.pixdim[:3], canonical.header.get_zooms()[:3], atol=1e-5)


def test_scaling_is_applied_and_lps_file_is_reoriented(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([-2.0, -1.5, 3.0, 1.0])  # LPS, anisotropic spacing
    image = nib.Nifti1Image(data, affine)
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, tmp_path / "v.nii.gz")
    volume = LoadVolume()(str(tmp_path / "v.nii.gz"))
    assert tuple(volume.shape) == (1, 4, 5, 6)
    np.testing.assert_allclose(np.asarray(volume)[0], data[::-1, ::-1, :] * 0.5 + 10.0)  # flipped to RAS, scaled
    np.testing.assert_allclose(volume.pixdim[:3], [2.0, 1.5, 3.0])
    resampled = LoadVolume(pixdim=(1.0, 1.0, 1.0))(str(tmp_path / "v.nii.gz"))
    assert tuple(resampled.shape[1:]) == (7, 7, 16)  # extent / new spacing, MONAI's rounding


def test_dicom_series_folder_becomes_a_volume_sorted_by_position(tmp_path: Path) -> None:
    series, study = generate_uid(), generate_uid()
    for z in [3, 0, 4, 1, 2]:  # written out of order on purpose
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0.0, 0.0, 2.5 * z]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [0.8, 0.8], 2.5, z + 1
        ds.set_pixel_data(np.full((6, 7), 100 * z, np.uint16), "MONOCHROME2", 12)
        ds.save_as(tmp_path / f"slice_{z}.dcm", enforce_file_format=True)
    volume = LoadVolume()(str(tmp_path))
    assert tuple(volume.shape) == (1, 7, 6, 5)  # (C, X, Y, Z): columns, rows, slices
    np.testing.assert_allclose(np.asarray(volume)[0, 0, 0, :], [0, 100, 200, 300, 400])  # sorted along +Z
    np.testing.assert_allclose(volume.pixdim[:3], [0.8, 0.8, 2.5], atol=1e-4)


def test_corrupt_nifti_and_wrong_kind_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not gzip at all")
    with pytest.raises(MedtlError, match="broken.nii.gz"):
        LoadVolume()(str(broken))
    with pytest.raises(MedtlError, match="neither a NIfTI file"):
        LoadVolume()(str(tmp_path / "x.png"))
    nan = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), np.nan, np.float32), np.eye(4)), nan)
    with pytest.raises(MedtlError, match="NaN"):
        LoadVolume()(str(nan))


def test_2d_nifti_loads_as_one_channel_slice(tmp_path: Path) -> None:
    data = np.arange(20, dtype=np.float32).reshape(4, 5)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 1.0, 1.0])), tmp_path / "slice.nii")
    volume = LoadVolume()(str(tmp_path / "slice.nii"))
    assert tuple(volume.shape) == (1, 4, 5)
    np.testing.assert_allclose(np.asarray(volume)[0], data)
    np.testing.assert_allclose(volume.pixdim[:2], [0.5, 0.5])
