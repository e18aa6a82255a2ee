"""The simulated acquisition shift: seeded, documented steps, and DICOM files the readers see as intended."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medtl.data.readers import DicomOptions, LoadRadiograph
from medtl.data.shift import AcquisitionShift, shift_for, write_shifted_site
from medtl.errors import MedtlError


def _phantom(size: int = 128) -> np.ndarray:
    """A smooth (H, W) image in [0, 1] with a sharp-edged square (for blur) and a gradient (for gamma)."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.2 + 0.5 * x
    image[size // 4:size // 2, size // 4:size // 2] = 0.9
    return image


def test_no_shift_is_the_identity() -> None:
    image = _phantom()
    np.testing.assert_allclose(shift_for("none")(image, np.random.default_rng(0)), image, atol=1e-6)


def test_strong_shift_crops_downsamples_darkens_and_blurs() -> None:
    image = _phantom()
    shifted = shift_for("strong", noise=0.0, jitter=0.0)(image, np.random.default_rng(0))
    cut = round(0.1 * 128)
    assert shifted.shape == (round((128 - 2 * cut) * 0.5),) * 2  # collimation, then half resolution
    assert 0.0 <= shifted.min() and shifted.max() <= 1.0
    assert shifted.mean() < image[cut:-cut, cut:-cut].mean() - 0.1  # exposure 0.8, gamma 1.6


def test_detector_blur_softens_edges_in_proportion_to_the_image_size() -> None:
    image = _phantom(512)
    blur = AcquisitionShift(blur_sigma=3.0, jitter=0.0)
    sharp_edge = np.abs(np.diff(image, axis=1)).max()
    assert np.abs(np.diff(blur(image, np.random.default_rng(0)), axis=1)).max() < 0.2 * sharp_edge
    np.testing.assert_allclose(blur(image, np.random.default_rng(0)).mean(), image.mean(), atol=1e-3)


def test_same_seed_same_image_other_seed_other_noise() -> None:
    shift, image = shift_for("strong"), _phantom()
    first = shift(image, np.random.default_rng([3, 0]))
    np.testing.assert_array_equal(first, shift(image, np.random.default_rng([3, 0])))
    assert not np.array_equal(first, shift(image, np.random.default_rng([4, 0])))


def test_unknown_severity_or_parameter_is_a_one_line_error() -> None:
    with pytest.raises(MedtlError, match="severity 'extreme' is unknown; choose one of"):
        shift_for("extreme")
    with pytest.raises(MedtlError, match=r"shift parameters \['contrast'\] are unknown"):
        shift_for("mild", contrast=2.0)


def test_shifted_site_is_monochrome1_dicom_read_back_as_the_shifted_image(tmp_path: Path, write_png) -> None:
    source = write_png(tmp_path / "src" / "a.png", shape=(64, 64), seed=1)
    frame = pd.DataFrame({"path": [str(source)], "label": ["NORMAL"], "patient_id": ["p001"]})
    shift = AcquisitionShift(exposure=0.9, gamma=1.2, window=(0.5, 1.0), jitter=0.0)
    written = write_shifted_site(frame, tmp_path / "site", shift, seed=0, progress=False)
    path = Path(written.loc[0, "path"])
    assert path.parent == tmp_path / "site" and "p001" not in path.name
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.PatientID != "p001"
    read = np.asarray(LoadRadiograph(DicomOptions(voi="auto"))(str(path)))[0]  # (H, W), bright = dense
    original = np.asarray(LoadRadiograph(DicomOptions())(str(source)))[0]
    low, high = np.percentile(original, [0.5, 99.5])
    expected = shift(np.clip((original - low) / (high - low), 0, 1), np.random.default_rng([0, 0]))
    assert np.corrcoef(read.ravel(), expected.ravel())[0, 1] > 0.99  # not inverted, same picture
