"""Built-in demo volumes: synthetic brain MRI phantoms, T1-weighted and FLAIR, written as NIfTI.

Each subject is a head (scalp fat, skull, CSF, grey and white matter, two lateral ventricles) with random
anatomy; FLAIR volumes also carry a few bright periventricular white-matter lesions. The two sequences differ
the way the real ones do: on T1 white matter is brighter than grey matter and CSF is dark; on FLAIR grey
matter is brighter than white matter and CSF is suppressed. Every volume is acquired with a protocol drawn
independently of its sequence (voxel spacing, field of view, orientation RAS/LPS/LAS, storage as uint8,
12-bit scanner units or float), so neither shape nor orientation tells the classes apart.

The set is generated once, deterministically from its seed, into a cache folder that only appears when
complete (written to a temporary sibling, then renamed). Layout ``<set>/{T1,FLAIR}/subjNNN_<SEQ>.nii.gz``
and ``<set>/manifest.csv``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from medtl.atomic import ensure_folder
from medtl.data.manifest import write_manifest

__all__ = ["VolumeDemoSpec", "ensure_demo_mri_volumes", "brain_phantom", "SEQUENCES"]

MANIFEST_NAME = "manifest.csv"
SEQUENCES = ("T1", "FLAIR")
# Relative signal per tissue: background, scalp fat, skull, CSF, grey matter, white matter, lesion.
CONTRASTS = {"T1": (0.0, 0.9, 0.08, 0.18, 0.6, 1.0, 0.55), "FLAIR": (0.0, 0.45, 0.08, 0.06, 0.75, 0.5, 1.0)}
PROTOCOLS = ((2.0, 2.0, 2.0), (3.0, 3.0, 3.0), (1.5, 1.5, 4.0), (2.5, 2.5, 2.5), (4.0, 1.5, 1.5))
ORIENTATIONS = ("RAS", "LPS", "LAS")
STORAGE = ("uint8", "int16_12bit", "float32")


@dataclass(frozen=True)
class VolumeDemoSpec:
    """What the demo set holds (``data.demo`` of ``+experiment=mri_sequence``); every field is in the cache key."""

    n_subjects: int = 24
    seed: int = 2026

    def cache_key(self) -> str:
        return f"mri_sequence_v1_n{self.n_subjects}_seed{self.seed}"


def ensure_demo_mri_volumes(cache_dir: str | Path, spec: VolumeDemoSpec = VolumeDemoSpec()) -> Path:
    """Return the demo manifest under ``cache_dir``, generating the set first if it is not there."""
    return ensure_folder(Path(cache_dir).expanduser() / spec.cache_key(), MANIFEST_NAME,
                         lambda folder: _write_set(folder, spec))


def _write_set(folder: Path, spec: VolumeDemoSpec) -> None:
    rows = []
    for subject in tqdm(range(1, spec.n_subjects + 1), desc="writing demo MRI volumes", unit="subject"):
        rng = np.random.default_rng([spec.seed, subject])
        anatomy = _anatomy(rng)
        for sequence in SEQUENCES:
            path = folder / sequence / f"subj{subject:03d}_{sequence}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = brain_phantom(anatomy, sequence, np.random.default_rng([spec.seed, subject, len(sequence)]))
            nib.save(image, str(path))
            rows.append({"path": str(path), "label": sequence, "patient_id": f"subj{subject:03d}"})
    write_manifest(pd.DataFrame(rows), folder / MANIFEST_NAME)


def _anatomy(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One subject's geometry in mm (RAS, centred on the head): semi-axes and offsets of each structure."""
    head = np.array([74.0, 92.0, 78.0]) * rng.uniform(0.9, 1.1, 3)
    return {"head": head, "skull": head - rng.uniform(5, 8), "brain": head - rng.uniform(11, 15),
            "ventricle": np.array([7.0, 22.0, 12.0]) * rng.uniform(0.7, 1.5, 3),
            "ventricle_gap": np.array([rng.uniform(6, 10)]), "wm_scale": np.array([rng.uniform(0.62, 0.75)]),
            "lesions": rng.uniform(-1, 1, (int(rng.integers(2, 6)), 3)) * np.array([20.0, 25.0, 15.0]),
            "field_seed": np.array([rng.integers(0, 2**31)])}


def brain_phantom(anatomy: dict[str, np.ndarray], sequence: str, rng: np.random.Generator) -> nib.Nifti1Image:
    """A ``sequence`` image of ``anatomy`` acquired with a random protocol, as a NIfTI image."""
    spacing = np.array(PROTOCOLS[rng.integers(len(PROTOCOLS))])
    extent = 2 * anatomy["head"] + rng.uniform(10, 60, 3)  # field of view in mm, covering the head
    shape = np.maximum(np.round(extent / spacing).astype(int), 8)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")  # (X, Y, Z) mm, RAS
    labels = _tissues(anatomy, x, y, z, spacing)
    signal = np.asarray(CONTRASTS[sequence], dtype=np.float32)[labels]
    signal = signal * _bias_field(shape, rng) + rng.normal(0, 0.02, shape).astype(np.float32)
    signal = np.abs(gaussian_filter(signal, 0.6))
    data, slope = _stored(signal, STORAGE[rng.integers(len(STORAGE))], rng)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(shape - 1) / 2 * spacing
    image = nib.Nifti1Image(data, affine)
    image = image.as_reoriented(_reorientation(ORIENTATIONS[rng.integers(len(ORIENTATIONS))]))
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    return image


def _reorientation(codes: str) -> np.ndarray:
    return nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes))


def _tissues(anatomy: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, z: np.ndarray,
             spacing: np.ndarray) -> np.ndarray:
    """Tissue index per voxel (see CONTRASTS): nested ellipsoids with a wobbly white-matter boundary."""
    def inside(semi: np.ndarray, cx: float = 0.0, cy: float = 0.0, cz: float = 0.0) -> np.ndarray:
        return ((x - cx) / semi[0]) ** 2 + ((y - cy) / semi[1]) ** 2 + ((z - cz) / semi[2]) ** 2

    rng = np.random.default_rng(int(anatomy["field_seed"][0]))
    wobble = gaussian_filter(rng.normal(0, 1, x.shape), 6.0 / spacing.mean()) * 2.5  # gyri-like folds
    labels = np.zeros(x.shape, dtype=np.int64)
    labels[inside(anatomy["head"]) <= 1] = 1
    labels[inside(anatomy["skull"]) <= 1] = 2
    labels[inside(anatomy["skull"] - 3) <= 1] = 3
    brain = inside(anatomy["brain"]) + 0.15 * wobble <= 1
    labels[brain] = 4
    labels[brain & (inside(anatomy["brain"] * anatomy["wm_scale"][0]) + 0.25 * wobble <= 1)] = 5
    for side in (-1, 1):
        gap = side * anatomy["ventricle_gap"][0]
        labels[inside(anatomy["ventricle"], cx=gap, cy=5.0, cz=8.0) <= 1] = 3
    for lesion in anatomy["lesions"]:
        labels[(inside(np.array([4.0, 4.0, 4.0]), *lesion) <= 1) & (labels == 5)] = 6
    return labels


def _bias_field(shape: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    coefficients = rng.uniform(-0.15, 0.15, 3)
    return np.exp(sum(c * g for c, g in zip(coefficients, grids))).astype(np.float32)


def _stored(signal: np.ndarray, storage: str, rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """The signal as a scanner or an export would store it, and the NIfTI scale slope (None: unscaled)."""
    if storage == "uint8":
        return np.clip(np.round(signal / signal.max() * 255), 0, 255).astype(np.uint8), None
    if storage == "int16_12bit":
        gain = rng.uniform(1500, 3800)
        return np.clip(np.round(signal * gain), 0, 4095).astype(np.int16), 1.0
    return (signal * rng.uniform(50, 900)).astype(np.float32), None
