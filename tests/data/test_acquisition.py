"""Another detector: fewer pixels, noise at that resolution, enlarged back as the pipeline enlarges."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medtl.data.acquisition import RandDetector, RandDetectord
from medtl.data.pipelines import RadiographPipeline
from medtl.data.resize import ResizeLongest
from medtl.errors import MedtlError
from medtl.models.registry import WeightsInfo


def _checkerboard() -> torch.Tensor:
    """``(1, 32, 32)``: 1-pixel squares of 0.2 and 0.8."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    return (0.2 + 0.6 * ((yy + xx) % 2)).float()[None]


def test_half_the_pixels_averages_fine_detail_away_and_enlarges_as_the_letterbox_does() -> None:
    out = RandDetector(prob=1.0, min_scale=0.5, max_scale=0.5)(_checkerboard())
    assert out.shape == (1, 32, 32)
    torch.testing.assert_close(out, torch.full((1, 32, 32), 0.5))  # each 2x2 block averaged: fine detail gone
    ramp = torch.linspace(0.0, 1.0, 32).repeat(32, 1)[None]  # (1, 32, 32), brighter to the right
    coarse = RandDetector(prob=1.0, min_scale=0.5, max_scale=0.5)(ramp)
    small = torch.nn.functional.avg_pool2d(ramp[None], 2)  # (1, 1, 16, 16): what the coarse detector stores
    torch.testing.assert_close(coarse, ResizeLongest(32)(small[0]))  # enlarged exactly as the pipeline would
    assert not torch.equal(coarse[..., 0::2], coarse[..., 1::2])  # interpolated, not 2-pixel blocks


def test_noise_is_added_at_the_coarse_resolution_and_grows_with_brightness() -> None:
    image = torch.cat([torch.full((1, 32, 16), 0.04), torch.full((1, 32, 16), 0.81)], dim=2)  # dark | bright
    detector = RandDetector(prob=1.0, min_scale=0.25, max_scale=0.25, noise=0.1)
    detector.set_random_state(3)
    out = torch.stack([detector(image) for _ in range(20)])  # (20, 1, 32, 32)
    noise = out - out.mean(dim=0)  # (20, 1, 32, 32): each draw's noise
    grain = noise[..., 20:]  # the bright half, away from the edge between the halves
    neighbours = torch.corrcoef(torch.stack([grain[..., :-1].flatten(), grain[..., 1:].flatten()]))[0, 1]
    assert neighbours > 0.6  # grain about 4 pixels wide: noise came before enlarging (pixel noise: ~0)
    dark, bright = noise[..., :12].std(), grain.std()
    assert bright > 2.5 * dark > 0  # std ~ n * sqrt(x): sqrt(0.81) / sqrt(0.04) = 4.5
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_full_resolution_without_noise_leaves_the_image_and_prob_zero_never_touches_it() -> None:
    image = _checkerboard()
    torch.testing.assert_close(RandDetector(prob=1.0, min_scale=1.0)(image), image)
    assert torch.equal(RandDetector(prob=0.0, min_scale=0.25, noise=0.5)(image), image)


def test_dictionary_wrapper_is_seeded() -> None:
    def run(seed: int) -> torch.Tensor:
        wrapper = RandDetectord("image", prob=1.0, min_scale=0.3, noise=0.1)
        wrapper.set_random_state(seed)
        return wrapper({"image": _checkerboard(), "label": 1})["image"]

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


@pytest.mark.parametrize("bad", [{"min_scale": 0.0}, {"min_scale": 0.8, "max_scale": 0.5}, {"noise": -0.1}])
def test_bad_settings_name_the_config_key(bad: dict) -> None:
    with pytest.raises(MedtlError, match="data.augment.detector_"):
        RandDetector(**{"min_scale": 0.5, **bad})


def test_pipeline_uses_it_only_when_configured(tmp_path) -> None:
    from PIL import Image

    path = tmp_path / "image.png"
    Image.fromarray((np.asarray(_checkerboard()[0]) * 255).astype(np.uint8)).save(path)
    weights = WeightsInfo(source="test", mean=(0.0,), std=(1.0,))
    still = {"rotate_deg": 0.0, "scale": 0.0, "translate": 0.0, "noise_std": 0.0, "prob": 1.0}
    plain = RadiographPipeline(image_size=32, augment=still).train_transforms(weights)
    assert not any(isinstance(t, RandDetectord) for t in plain.transforms)
    coarse = RadiographPipeline(image_size=32, augment={**still, "detector_resolution": 0.6,
                                                        "detector_noise": 0.05}).train_transforms(weights)
    assert any(isinstance(t, RandDetectord) for t in coarse.transforms)
    coarse.set_random_state(0)
    out = torch.as_tensor(coarse({"image": str(path)})["image"])  # (1, 32, 32)
    detail = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert detail(out) < 0.7 * detail(torch.as_tensor(plain({"image": str(path)})["image"]))
