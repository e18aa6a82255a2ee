"""The letterbox's resize: area averaging to shrink, bilinear interpolation to enlarge."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from medtl.data.pipelines import RadiographPipeline
from medtl.data.resize import ResizeLongest, ResizeLongestd
from medtl.models.registry import WeightsInfo


def _ramp(height: int, width: int) -> torch.Tensor:
    """``(1, H, W)``: brighter to the right, 0 to 1."""
    return torch.linspace(0.0, 1.0, width).repeat(height, 1)[None]


def test_shrinking_averages_each_block_of_pixels() -> None:
    image = torch.rand(1, 64, 32, generator=torch.Generator().manual_seed(0))
    out = torch.as_tensor(ResizeLongest(32)(image))
    assert out.shape == (1, 32, 16)  # longest side to 32, aspect kept
    torch.testing.assert_close(out, torch.nn.functional.avg_pool2d(image[None], 2)[0])


def test_enlarging_interpolates_instead_of_replicating_pixels() -> None:
    small = _ramp(16, 8)  # (1, 16, 8)
    out = torch.as_tensor(ResizeLongest(40)(small))  # 2.5x, as the strong simulated site is enlarged
    assert out.shape == (1, 40, 20)
    row = out[0, 0]
    steps = row[1:] - row[:-1]
    assert (steps > 0).all()  # every pixel brighter than its left neighbour: no flat blocks
    torch.testing.assert_close(steps[1:-1], torch.full((17,), float(steps[1:-1].mean())))  # no jumps either
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    torch.testing.assert_close(out.mean(), small.mean(), atol=0.01, rtol=0.0)


def test_an_image_at_the_input_size_is_unchanged() -> None:
    image = torch.rand(1, 32, 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(torch.as_tensor(ResizeLongest(32)(image)), image)
    out = ResizeLongestd("image", size=32)({"image": image, "label": 1})
    torch.testing.assert_close(torch.as_tensor(out["image"]), image)
    assert out["label"] == 1


def test_pipeline_letterboxes_a_small_image_smoothly(tmp_path) -> None:
    path = tmp_path / "small.png"
    Image.fromarray((np.asarray(_ramp(16, 16)[0]) * 255).astype(np.uint8)).save(path)
    weights = WeightsInfo(source="test", mean=(0.0,), std=(1.0,))
    out = torch.as_tensor(RadiographPipeline(image_size=40).eval_transforms(weights)({"image": str(path)})["image"])
    assert out.shape == (1, 40, 40)
    row = out[0, 20]
    assert int((row[1:] == row[:-1]).sum()) <= 2  # pixel replication would repeat 24 of 39 neighbours
