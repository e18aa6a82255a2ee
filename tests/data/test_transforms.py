from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.transforms import RandAdjustContrastd, RandGaussianSmoothd, RandScaleIntensityd
from PIL import Image

from medtl.data.pipelines import RadiographPipeline
from medtl.models.registry import WeightsInfo

WEIGHTS = WeightsInfo(source="test")


def _radiograph(tmp_path: Path) -> str:
    """A grey gradient with a bright disc: contrast and sharpness both show."""
    yy, xx = np.mgrid[0:64, 0:64]
    image = (xx * 3 + ((yy - 32) ** 2 + (xx - 32) ** 2 < 200) * 60).clip(0, 255).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    return str(path)


def _augmented(path: str, seed: int, **augment: float) -> torch.Tensor:
    transform = RadiographPipeline(image_size=32, augment={"rotate_deg": 0.0, "scale": 0.0, "translate": 0.0,
                                                           "noise_std": 0.0, "prob": 1.0, **augment})
    compose = transform.train_transforms(WEIGHTS)
    compose.set_random_state(seed)
    return torch.as_tensor(compose({"image": path})["image"])  # (1, 32, 32)


def test_acquisition_augmentation_is_off_by_default_and_changes_contrast_and_sharpness(tmp_path: Path) -> None:
    path = _radiograph(tmp_path)
    plain = RadiographPipeline(image_size=32).train_transforms(WEIGHTS)
    assert not any(isinstance(t, (RandAdjustContrastd, RandGaussianSmoothd)) for t in plain.transforms)
    untouched = _augmented(path, 0)
    contrast = _augmented(path, 0, gamma=0.5)
    blurred = _augmented(path, 0, blur=2.0)
    assert contrast.shape == blurred.shape == (1, 32, 32)
    assert not torch.allclose(contrast, untouched)
    assert torch.allclose(contrast.amin(), untouched.amin(), atol=1e-5)  # a curve on [0, 1]: the ends stay
    edges = lambda x: (x[..., 4:-4, 5:-4] - x[..., 4:-4, 4:-5]).abs().sum()  # noqa: E731 (inside the border)
    assert edges(blurred) < 0.9 * edges(untouched)
    assert torch.equal(_augmented(path, 3, gamma=0.5, blur=2.0), _augmented(path, 3, gamma=0.5, blur=2.0))  # seeded


def test_highlight_clipping_saturates_the_brightest_part_and_keeps_the_rest_linear(tmp_path: Path) -> None:
    path = _radiograph(tmp_path)
    untouched = _augmented(path, 0)
    clipped = torch.stack([_augmented(path, seed, clip_highlights=0.5) for seed in range(8)])  # (8, 1, 32, 32)
    top = untouched.max()
    assert torch.all(clipped <= top + 1e-5)  # nothing brighter than white
    saturated = [(c >= top - 1e-5).float().mean().item() for c in clipped]
    assert max(saturated) > 2 * (untouched >= top - 1e-5).float().mean().item()  # more of the image turns white
    span = top - untouched.min()
    low = (untouched > untouched.min() + 0.05 * span) & (untouched < untouched.min() + 0.3 * span)  # dark: scales
    factor = (clipped[:, low] - untouched.min()) / (untouched[low] - untouched.min())  # (8, n) one factor per image
    assert factor.std(dim=1).max() < 0.05 and factor.mean() > 1.0
    assert not any(isinstance(t, RandScaleIntensityd)
                   for t in RadiographPipeline(image_size=32).train_transforms(WEIGHTS).transforms)
