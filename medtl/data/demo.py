"""Built-in demo data: synthetic chest radiographs written as real DICOM files.

Each image is a frontal chest phantom (soft tissue, two lung fields, mediastinum, spine, ribs)
with random anatomy, exposure and noise. ``PNEUMONIA`` images carry a consolidation: a bright,
textured opacity inside one lung field. Files are DX "for presentation" objects, 12 bits stored
in 16, with RescaleSlope/Intercept and PixelSpacing; about a third are MONOCHROME1 (inverted
storage), as many CR/DX systems export. Patient tags are synthetic (``DEMO-0001``...).

The set is generated once, deterministically from its seed, into a cache folder; the folder only
appears when complete (written to a temporary sibling, then renamed).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from medtl.atomic import ensure_folder
from medtl.data.manifest import write_manifest

__all__ = ["DemoSpec", "dx_dataset", "ensure_demo_chest_xray", "synthetic_chest", "write_dx_dicom"]

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
MANIFEST_NAME = "manifest.csv"
BITS_STORED = 12


@dataclass(frozen=True)
class DemoSpec:
    """What the demo set holds; every field changes the files, so all are part of the cache key."""

    n_patients: int = 240
    image_size: int = 256
    seed: int = 2024
    second_image_fraction: float = 0.2
    monochrome1_fraction: float = 0.35

    def cache_key(self) -> str:
        return (f"chest_xray_v1_n{self.n_patients}_s{self.image_size}_seed{self.seed}"
                f"_p{self.second_image_fraction}_m{self.monochrome1_fraction}")


def ensure_demo_chest_xray(cache_dir: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Return the demo manifest under ``cache_dir``, generating the set first if it is not there."""
    return ensure_folder(Path(cache_dir).expanduser() / spec.cache_key(), MANIFEST_NAME,
                         lambda folder: _write_demo_set(folder, spec))


def synthetic_chest(rng: np.random.Generator, size: int, pneumonia: bool) -> np.ndarray:
    """One synthetic frontal chest radiograph, ``(H, W)`` float in [0, 1], bright = dense."""
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    u = rng.uniform
    image = 0.08 + 0.30 * _ellipse(xx, yy, u(-0.04, 0.04), 0.05, u(0.78, 0.9), 0.98)
    lung_y, lung_rx, lung_ry = u(-0.12, 0.0), u(0.24, 0.3), u(0.5, 0.6)
    lungs = [_ellipse(xx, yy, side * u(0.34, 0.42), lung_y, lung_rx, lung_ry) for side in (-1, 1)]
    lung_mask = np.maximum(*lungs)
    image -= 0.2 * lung_mask
    image += 0.22 * _ellipse(xx, yy, u(0.02, 0.12), u(0.18, 0.3), u(0.2, 0.27), u(0.24, 0.32))
    image += 0.3 * (np.abs(xx - u(-0.02, 0.02)) < 0.07)
    for k in range(9):
        rib = np.abs(yy - (-0.62 + 0.14 * k + 0.22 * xx**2)) < 0.018
        image += 0.08 * rib * lung_mask
    if pneumonia:
        side = rng.choice([-1, 1])
        cx, cy = side * u(0.3, 0.45), lung_y + u(-0.3, 0.35)
        sigma = u(0.08, 0.14)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        texture = gaussian_filter(rng.normal(size=image.shape), size / 64) * 4
        image += u(0.18, 0.28) * blob * (1 + 0.3 * texture) * lung_mask
    image = gaussian_filter(image, u(0.6, 1.4)) * u(0.85, 1.15)
    image += rng.normal(0.0, 0.015, image.shape)
    return np.clip(image, 0.0, 1.0) ** u(0.8, 1.2)


def write_dx_dicom(path: Path, image: np.ndarray, patient_id: str, monochrome1: bool,
                   rescale: tuple[float, float], window: tuple[float, float] | None = None) -> None:
    """Write ``image`` ((H, W), float in [0, 1], bright = dense) as a 12-bit DX DICOM file.

    ``rescale`` is (RescaleSlope, RescaleIntercept); stored = (value - intercept) / slope, with
    value = image * 4095, and MONOCHROME1 stores 4095 - stored. ``rescale`` must keep the stored
    values within 12 bits. ``window`` (centre, width, in rescaled units) is written as the VOI window.
    """
    slope, intercept = rescale
    value = np.round(image * (2**BITS_STORED - 1))
    stored = np.round((value - intercept) / slope)
    if monochrome1:  # the lowest stored value displays white
        stored = (2**BITS_STORED - 1) - stored
    ds = dx_dataset(patient_id)
    ds.set_pixel_data(stored.astype(np.uint16), "MONOCHROME1" if monochrome1 else "MONOCHROME2", BITS_STORED)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:.1f}", f"{window[1]:.1f}"
    ds.save_as(path, enforce_file_format=True)


def dx_dataset(patient_id: str) -> Dataset:
    """A DX "for presentation" dataset with file meta and synthetic patient tags, without pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    ds.PatientID, ds.PatientName = patient_id, f"Demo^{patient_id}"
    ds.PatientBirthDate, ds.ViewPosition, ds.BodyPartExamined = "19700101", "PA", "CHEST"
    ds.PixelSpacing, ds.ImagerPixelSpacing = [0.7, 0.7], [0.7, 0.7]
    return ds


def _write_demo_set(folder: Path, spec: DemoSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    rows, image_index = [], 0
    for index in tqdm(range(spec.n_patients), desc="demo: writing synthetic DICOM", unit="patient"):
        patient_id, label = f"DEMO-{index:04d}", ("PNEUMONIA" if index % 2 else "NORMAL")
        n_images = 2 if rng.uniform() < spec.second_image_fraction else 1
        for _ in range(n_images):
            name = Path(label) / f"img_{image_index:05d}.dcm"  # file names carry no patient id
            image_index += 1
            (folder / label).mkdir(exist_ok=True)
            image = synthetic_chest(rng, spec.image_size, pneumonia=label == "PNEUMONIA")
            rescale = (2.0, -1024.0) if rng.uniform() < 0.5 else (1.0, 0.0)
            write_dx_dicom(folder / name, image, patient_id, rng.uniform() < spec.monochrome1_fraction, rescale)
            rows.append({"path": str(folder / name), "label": label, "patient_id": patient_id})
    write_manifest(pd.DataFrame(rows), folder / MANIFEST_NAME)


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Soft-edged ellipse mask, 1 inside, 0 outside."""
    radius = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    return np.clip((1.1 - radius) / 0.2, 0.0, 1.0)
