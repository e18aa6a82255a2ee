"""The same real radiograph stored four ways reaches the model as one image and one prediction."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.uid import RLELossless

from medtl.data.demo import dx_dataset
from medtl.data.transforms import IntensityConfig, eval_transforms
from medtl.models import build_classifier
from tests.conftest import SHARED_DATA

KERMANY = SHARED_DATA / "chest_xray_kermany" / "train"
pytestmark = pytest.mark.skipif(not KERMANY.is_dir(), reason="../shared/data/chest_xray_kermany absent")


def write_dicom(path: Path, stored: np.ndarray, bits: int, photometric: str, rescale: tuple[float, float] | None,
                rle: bool = False) -> Path:
    ds = dx_dataset("P")
    ds.set_pixel_data(stored.astype(np.uint8 if bits == 8 else np.uint16), photometric, bits)
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
    if rle:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


def four_versions(jpeg: Path, folder: Path) -> list[Path]:
    grey = np.asarray(Image.open(jpeg).convert("L"), dtype=np.int64)  # (H, W) in 0..255
    twelve_bit = (grey * 16 + 1024) // 2  # value = grey * 16 stored with slope 2, intercept -1024
    return [
        jpeg,
        write_dicom(folder / "mono2_8bit.dcm", grey, 8, "MONOCHROME2", None),
        write_dicom(folder / "mono1_12bit.dcm", 4095 - twelve_bit, 12, "MONOCHROME1", (2.0, -1024.0)),
        write_dicom(folder / "rle_16bit.dcm", grey * 256, 16, "MONOCHROME2", None, rle=True),
    ]


@pytest.mark.parametrize("name", ["NORMAL", "PNEUMONIA"])
def test_jpeg_and_dicom_encodings_agree(name: str, tmp_path: Path) -> None:
    jpeg = sorted((KERMANY / name).iterdir())[0]
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=128).eval()
    transform = eval_transforms(128, model.encoder.weights_info, IntensityConfig())
    images = [torch.as_tensor(np.asarray(transform({"image": str(p), "path": str(p)})["image"]))
              for p in four_versions(jpeg, tmp_path)]
    assert all(tuple(i.shape) == (1, 128, 128) for i in images)
    for other in images[1:]:
        torch.testing.assert_close(other, images[0], atol=1e-4, rtol=0)
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack(images)), dim=1)  # (4, 2)
    torch.testing.assert_close(probs, probs[:1].expand_as(probs), atol=1e-5, rtol=0)
