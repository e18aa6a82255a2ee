"""A seeded acquisition shift that turns images of one site into images as "another site" would store them.

Applied to a held-out, patient-disjoint part of a data set it makes a target domain with known labels
for domain-adaptation experiments and ``benchmarks/domain_shift.py``. In order, per image:

1. collimation: a tighter field, cutting ``collimation`` of the height and width from each border;
2. detector resolution: resampled (area average) to ``resolution`` of the size per side;
3. detector blur: Gaussian, ``blur_sigma`` pixels at a 512-pixel image (scaled with the size);
4. exposure and processing: ``clip(exposure * x) ** gamma`` on the [0, 1] image (bright = dense);
5. quantum noise: Gaussian with standard deviation ``noise * sqrt(x)``;
6. export: 12-bit MONOCHROME1 DICOM with a VOI window (``window`` = centre, width in [0, 1] units)
   that the reader applies (``data.dicom.voi=auto``), clipping what lies outside it.

Every parameter varies per image by a factor in ``[1 - jitter, 1 + jitter]``, drawn from a generator
seeded by ``(seed, image index)``: the same seed gives the same files.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from medtl.data.demo import write_dx_dicom
from medtl.data.readers import DicomOptions, LoadRadiograph
from medtl.errors import MedtlError

__all__ = ["AcquisitionShift", "SEVERITIES", "shift_for", "write_shifted_site"]


@dataclass(frozen=True)
class AcquisitionShift:
    """Parameters of the shift (see the module docstring for what each does)."""

    exposure: float = 1.0
    gamma: float = 1.0
    blur_sigma: float = 0.0
    noise: float = 0.0
    resolution: float = 1.0
    collimation: float = 0.0
    window: tuple[float, float] = (0.5, 1.0)
    jitter: float = 0.1

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(H, W)`` float image in [0, 1] -> shifted ``(H', W')`` float image in [0, 1]."""
        def vary(value: float) -> float:
            return value * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)

        height, width = image.shape
        cut = min(0.45, vary(self.collimation))
        top, left = round(cut * height), round(cut * width)
        image = image[top:height - top or None, left:width - left or None]  # (H - 2 top, W - 2 left)
        scale = min(1.0, vary(self.resolution))
        size = (max(8, round(image.shape[1] * scale)), max(8, round(image.shape[0] * scale)))  # PIL: (W, H)
        image = np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX))
        if self.blur_sigma > 0:
            image = gaussian_filter(image, vary(self.blur_sigma) * max(image.shape) / 512.0)
        image = np.clip(vary(self.exposure) * image, 0.0, 1.0) ** vary(self.gamma)
        if self.noise > 0:
            image = image + vary(self.noise) * np.sqrt(image) * rng.standard_normal(image.shape)
        return np.clip(image, 0.0, 1.0)


SEVERITIES: dict[str, AcquisitionShift] = {
    "none": AcquisitionShift(jitter=0.0),
    "mild": AcquisitionShift(exposure=0.9, gamma=1.25, blur_sigma=1.5, noise=0.02, resolution=0.75,
                             collimation=0.04, window=(0.5, 0.9)),
    "strong": AcquisitionShift(exposure=0.8, gamma=1.6, blur_sigma=3.0, noise=0.05, resolution=0.5,
                               collimation=0.1, window=(0.35, 0.7)),
}


def shift_for(severity: str, **overrides: float) -> AcquisitionShift:
    """The preset ``severity`` (``none``, ``mild``, ``strong``) with any field replaced by ``overrides``."""
    if severity not in SEVERITIES:
        raise MedtlError(f"shift severity '{severity}' is unknown; choose one of {sorted(SEVERITIES)}")
    fields = {f.name for f in dataclasses.fields(AcquisitionShift)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise MedtlError(f"shift parameters {unknown} are unknown; the shift has {sorted(fields)}")
    return dataclasses.replace(SEVERITIES[severity], **overrides)


def write_shifted_site(frame: pd.DataFrame, out_dir: str | Path, shift: AcquisitionShift, seed: int,
                       dicom: DicomOptions = DicomOptions(), progress: bool = True) -> pd.DataFrame:
    """Write every image of ``frame`` through ``shift`` as 12-bit MONOCHROME1 DICOM under ``out_dir``.

    Returns the new frame: same rows and columns, ``path`` pointing at the written files (named by row
    position, no patient id in the name). Source images are windowed to [0, 1] at their 0.5/99.5 percentiles.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load = LoadRadiograph(dicom)
    paths = []
    for position, path in enumerate(tqdm(frame["path"], desc="writing shifted site", disable=not progress,
                                         unit="image")):
        image = np.asarray(load(path))[0]  # (1, H, W) -> (H, W)
        low, high = np.percentile(image, [0.5, 99.5])
        grey = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
        shifted = shift(grey, np.random.default_rng([seed, position]))
        target = out_dir / f"img_{position:06d}.dcm"
        centre, width = shift.window
        write_dx_dicom(target, shifted, "SHIFTED", monochrome1=True, rescale=(1.0, 0.0),
                       window=(centre * 4095.0, width * 4095.0))
        paths.append(str(target))
    return frame.assign(path=paths)
