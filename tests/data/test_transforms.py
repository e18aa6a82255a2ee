from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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


def _eval_input(path: str, size: int, equalize: bool) -> np.ndarray:
    pipeline = RadiographPipeline(image_size=size, intensity={"equalize": equalize, "lower_percentile": 0.0,
                                                              "upper_percentile": 100.0})
    return np.asarray(pipeline.eval_transforms(WeightsInfo(source="test", mean=(0.0,), std=(1.0,)))(
        {"image": path})["image"])  # (1, S, S) in [0, 1]


def test_equalisation_gives_the_same_input_under_another_sites_contrast_curve_and_exposure(tmp_path: Path) -> None:
    """A monotone change of grey levels (gamma 1.6, 80% exposure) moves the plain input a lot and the equalised
    one hardly at all; equalised values spread evenly over [0, 1]."""
    rng = np.random.default_rng(0)
    base = np.clip(rng.normal(0.45, 0.15, (48, 32)), 0.0, 1.0)  # (H, W): a portrait image, letterboxed, not resized
    paths = {}
    for name, image in {"site_a": base, "site_b": (0.8 * base) ** 1.6}.items():
        paths[name] = str(tmp_path / f"{name}.tiff")
        Image.fromarray((image * 65535).astype(np.uint16)).save(paths[name])
    plain = {name: _eval_input(path, 48, equalize=False) for name, path in paths.items()}
    equalised = {name: _eval_input(path, 48, equalize=True) for name, path in paths.items()}
    assert np.abs(plain["site_a"] - plain["site_b"]).mean() > 0.05
    assert np.abs(equalised["site_a"] - equalised["site_b"]).mean() < 0.01
    image = equalised["site_a"][0, :, 8:40]  # the 32 columns of image inside the zero letterbox padding
    assert np.all(equalised["site_a"][0, :, :8] == 0.0)
    assert abs(float(np.median(image)) - 0.5) < 0.05 and image.max() == pytest.approx(1.0)


def test_equalisation_is_recorded_in_the_card_and_keeps_the_old_cache_key_when_off() -> None:
    from medtl.data.pipelines import pipeline_from_card

    weights = WeightsInfo(source="test")
    off, on = RadiographPipeline(image_size=32), RadiographPipeline(image_size=32, intensity={"equalize": True})
    assert "equalize" not in off.cache_signature(weights)  # disk caches written before the option stay valid
    assert off.cache_signature(weights) != on.cache_signature(weights)
    rebuilt = pipeline_from_card(on.to_card(), "test")
    assert rebuilt.intensity.equalize is True


def test_foreground_crop_shows_the_anatomy_at_the_same_scale_whatever_black_field_surrounds_it(tmp_path: Path) -> None:
    """A 40 x 24 'head' alone, and the same head in a wide black field: with the crop both give the same input."""
    rng = np.random.default_rng(0)
    head = rng.integers(80, 255, size=(40, 24)).astype(np.uint8)
    head[20, 12], head[10, 10] = 0, 255  # both images then span 0-255: the same intensity window
    wide = np.zeros((120, 120), dtype=np.uint8)
    wide[30:70, 50:74] = head
    inputs = {}
    for name, image in {"tight": head, "wide": wide, "blank": np.zeros((30, 30), np.uint8)}.items():
        Image.fromarray(image).save(tmp_path / f"{name}.png")
        for crop in (None, 0.1):
            pipeline = RadiographPipeline(image_size=40, intensity={"lower_percentile": 0.0, "upper_percentile": 100.0},
                                          crop={"foreground": crop})
            transform = pipeline.eval_transforms(WeightsInfo(source="test", mean=(0.0,), std=(1.0,)))
            inputs[name, crop] = np.asarray(transform({"image": str(tmp_path / f"{name}.png")})["image"])
    assert all(value.shape == (1, 40, 40) for value in inputs.values())
    assert np.abs(inputs["tight", 0.1] - inputs["wide", 0.1]).max() < 1e-5
    assert (inputs["wide", None] > 0).mean() < 0.1 < 0.5 < (inputs["wide", 0.1] > 0).mean()  # 40 x 24 of 40 x 40
    assert np.all(inputs["blank", 0.1] == 0.0)  # nothing above the level: kept whole, not an empty crop
    off = RadiographPipeline(image_size=40)
    assert off.cache_signature(WEIGHTS) != RadiographPipeline(image_size=40, crop={"foreground": 0.1}).cache_signature(WEIGHTS)
    assert "foreground" not in off.cache_signature(WEIGHTS)
