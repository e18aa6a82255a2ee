"""Simulated other sites for volumes: the same heads as another scanner and export would store them.

Each :class:`VolumeSite` reslices (thick 2D slices, or thin 3D ones), reorients (RAS, LPS, LAS...), tilts the
slice grid (an oblique acquisition), changes the units (12-bit scanner values, uint8 export, z-scores) and
writes a NIfTI file or a DICOM series (``write_dicom_series``, MR Image Storage, one file per slice, patient
position and orientation in LPS as scanners write them). Spatial changes go through MONAI transforms on a
``MetaTensor``, so the affine always describes where the anatomy is: a correct reader puts every head back in
place, and whatever differs is what another site would really differ by.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from monai.transforms import Orientation, Rotate, Spacing
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from tqdm.auto import tqdm

from medtl.atomic import ensure_folder
from medtl.data.manifest import write_manifest
from medtl.data.volumes import LoadVolume
from medtl.errors import MedtlError

__all__ = ["VolumeSite", "VOLUME_SITES", "simulate_volume", "volume_site", "write_dicom_series", "write_site_volumes",
           "write_volume_site"]

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
UNITS = ("float", "raw12", "uint8", "zscore")


@dataclass(frozen=True)
class VolumeSite:
    """How another site acquires and stores a volume.

    Attributes:
        spacing: reslice to this voxel spacing in mm (``(0.9, 0.9, 6.0)``: a thick-slice 2D acquisition); ``None``
            keeps the source's.
        axcodes: the orientation the file stores (``LPS``: DICOM's patient axes).
        tilt_deg: rotation of the slice grid about the left-right axis (an oblique acquisition).
        units: ``raw12`` (integers 0-4095 at an arbitrary gain), ``uint8`` (0-255), ``zscore`` (mean 0, sd 1 over
            the head) or ``float`` (as it is).
        dicom: write a DICOM series folder instead of a NIfTI file.
    """

    name: str
    spacing: tuple[float, float, float] | None = None
    axcodes: str = "RAS"
    tilt_deg: float = 0.0
    units: str = "float"
    dicom: bool = False

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise MedtlError(f"volume site {self.name}: units='{self.units}' is unknown; use one of {', '.join(UNITS)}")


VOLUME_SITES = {site.name: site for site in (
    VolumeSite("thick_slices_dicom", spacing=(0.9, 0.9, 6.0), axcodes="LPS", units="raw12", dicom=True),
    VolumeSite("thin_3d_zscore", spacing=(1.0, 1.0, 1.0), axcodes="RAS", units="zscore"),
    VolumeSite("oblique_uint8", spacing=None, axcodes="LAS", tilt_deg=15.0, units="uint8"),
    VolumeSite("raw12_ras", spacing=None, axcodes="RAS", units="raw12"),
)}


def simulate_volume(path: str, site: VolumeSite, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The volume at ``path`` as ``site`` would store it: ``(X, Y, Z)`` array and its RAS affine."""
    volume = LoadVolume(axcodes="RAS")(path)  # (1, X, Y, Z) MetaTensor
    if site.spacing is not None:
        volume = Spacing(pixdim=site.spacing, mode="bilinear")(volume)
    if site.tilt_deg:
        volume = Rotate(angle=(np.deg2rad(site.tilt_deg), 0.0, 0.0), keep_size=False, mode="bilinear",
                        padding_mode="zeros")(volume)  # outside the tilted field of view: air
    volume = Orientation(axcodes=site.axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(volume)
    array = np.clip(np.asarray(volume[0], dtype=np.float32), 0.0, None)
    return _units(array, site.units, rng), np.asarray(volume.affine, dtype=float)


def _units(array: np.ndarray, units: str, rng: np.random.Generator) -> np.ndarray:
    if units == "raw12":
        return np.clip(np.round(array / max(float(array.max()), 1e-6) * rng.uniform(1800, 4095)), 0, 4095).astype(np.uint16)
    if units == "uint8":
        return np.clip(np.round(array / max(float(np.percentile(array, 99.9)), 1e-6) * 255), 0, 255).astype(np.uint8)
    if units == "zscore":
        head = array[array > np.percentile(array, 60)]
        return ((array - head.mean()) / max(float(head.std()), 1e-6)).astype(np.float32)
    return array


def write_dicom_series(array: np.ndarray, affine: np.ndarray, folder: str | Path, series_number: int = 1,
                       description: str = "SIMULATED", patient_id: str = "SIM-0001") -> Path:
    """Write ``(X, Y, Z)`` integer voxels with RAS ``affine`` as a DICOM series: one MR file per Z slice.

    Files are named in reverse slice order (``IM0001`` is the last slice) so that a reader that orders by name
    instead of by position gets the volume upside down; positions and orientation are in LPS.
    """
    if not np.issubdtype(array.dtype, np.integer):
        raise MedtlError("write_dicom_series stores integers; convert the volume (for example units=raw12) first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_FROM_RAS @ affine
    column_step, row_step = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    depth = array.shape[2]
    for k in range(depth):
        dataset = _mr_slice(array[:, :, k].T, lps, k, (row_step, column_step), series_number, description, patient_id)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.FrameOfReferenceUID = study, series, frame
        dataset.save_as(folder / f"IM{depth - k:04d}", enforce_file_format=True)
    return folder


def _mr_slice(pixels: np.ndarray, lps: np.ndarray, k: int, spacing: tuple[float, float], series_number: int,
              description: str, patient_id: str) -> Dataset:
    """One slice: ``pixels`` is ``(rows, columns)`` = ``(Y, X)`` of slice ``k``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.SeriesNumber, dataset.SeriesDescription = "MR", series_number, description
    dataset.PatientID, dataset.PatientName = patient_id, "SIMULATED^SITE"
    dataset.InstanceNumber = k + 1
    dataset.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
    rows_dir, cols_dir = lps[:3, 0] / np.linalg.norm(lps[:3, 0]), lps[:3, 1] / np.linalg.norm(lps[:3, 1])
    dataset.ImageOrientationPatient = [float(v) for v in (*rows_dir, *cols_dir)]
    dataset.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    dataset.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 1.0, 0.0
    dataset.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return dataset


def write_volume_site(frame: pd.DataFrame, folder: str | Path, site: VolumeSite, seed: int = 0,
                      progress: bool = True) -> Path:
    """Write every volume of ``frame`` (``path, label, patient_id``) as ``site`` stores it, with a manifest.

    The site appears under ``folder`` only when complete (a temporary sibling renamed into place); an existing
    site is reused. Returns the manifest path.
    """
    def write(staging: Path) -> None:
        write_manifest(write_site_volumes(frame, staging, site, seed, progress), staging / "manifest.csv")

    return ensure_folder(Path(folder).expanduser(), "manifest.csv", write)


def write_site_volumes(frame: pd.DataFrame, folder: Path, site: VolumeSite, seed: int = 0,
                       progress: bool = True) -> pd.DataFrame:
    """Write every volume of ``frame`` as ``site`` stores it under ``folder``; the frame of the written files
    (``path, label, patient_id, site``). The caller makes the folder appear whole (see :func:`write_volume_site`)."""
    rows = [_write_one(row, index, Path(folder), site, seed)
            for index, row in enumerate(tqdm(frame.to_dict("records"), desc=f"site {site.name}", unit="volume",
                                             disable=not progress))]
    return pd.DataFrame(rows, columns=["path", "label", "patient_id", "site"])


def volume_site(name: str) -> VolumeSite:
    """The simulated volume site called ``name`` (``data.target_simulation.severity`` for volumes)."""
    if name not in VOLUME_SITES:
        raise MedtlError(f"data.target_simulation.severity='{name}' is not a simulated volume site; for volumes "
                         f"choose one of {sorted(VOLUME_SITES)}")
    return VOLUME_SITES[name]


def _write_one(row: dict, index: int, folder: Path, site: VolumeSite, seed: int) -> dict:
    array, affine = simulate_volume(row["path"], site, np.random.default_rng([seed, index]))
    name = f"{row['patient_id']}_{row['label']}"
    if site.dicom:
        out = write_dicom_series(array, affine, folder / str(row["label"]) / name, series_number=index + 1)
    else:
        out = folder / str(row["label"]) / f"{name}.nii.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, affine), str(out))
    return {"path": str(out), "label": row["label"], "patient_id": row["patient_id"], "site": site.name}
