"""Training batches that each look like one other site: the acquisition augmentation drawn once per batch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medtl.data import ImageClassificationData
from medtl.data.acquisition import RandDetectord
from medtl.data.pipelines import RadiographPipeline
from medtl.data.site_batches import SiteBatches
from medtl.data.transforms import AugmentConfig, batch_augmentation
from medtl.engine.state import random_transforms
from medtl.models.registry import WeightsInfo

WEIGHTS = WeightsInfo(source="test", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
SITE = {"gamma": 0.7, "blur": 1.0, "detector_resolution": 0.6, "detector_noise": 0.05, "prob": 1.0,
        "acquisition_per_batch": True}


def _normalised_items(n: int) -> list[dict]:
    """``n`` items holding the same normalised ``(1, 32, 32)`` ramp."""
    ramp = torch.linspace(0.05, 0.95, 32).repeat(32, 1)[None]  # (1, 32, 32) in [0, 1]
    image = (ramp - np.mean(WEIGHTS.mean)) / np.mean(WEIGHTS.std)
    return [{"image": image.clone(), "label": i % 2} for i in range(n)]


def _collate(seed: int = 0, **augment: float) -> SiteBatches:
    collate = batch_augmentation(AugmentConfig(**{**SITE, **augment}), WEIGHTS)
    assert isinstance(collate, SiteBatches)
    return collate.set_random_state(seed)


def test_every_image_of_a_batch_gets_the_same_acquisition_and_batches_get_another() -> None:
    collate = _collate(detector_noise=0.0)  # the noise's level is shared, each image's grain is its own
    first, second = collate(_normalised_items(4)), collate(_normalised_items(4))
    assert first["image"].shape == (4, 1, 32, 32) and first["label"].tolist() == [0, 1, 0, 1]
    assert type(first["image"]) is torch.Tensor  # not MONAI's MetaTensor: the model gets plain tensors
    for batch in (first, second):
        for image in batch["image"][1:]:
            torch.testing.assert_close(image, batch["image"][0])  # one draw: identical inputs stay identical
    assert not torch.allclose(first["image"][0], _normalised_items(1)[0]["image"], atol=0.05)  # it did change them
    assert not torch.allclose(first["image"][0], second["image"][0], atol=0.01)  # another site, another draw


def test_it_works_in_the_images_own_range_and_hands_back_the_normalisation() -> None:
    untouched = _collate(prob=0.0)(_normalised_items(3))["image"]  # every step drawn off
    torch.testing.assert_close(untouched, torch.stack([item["image"] for item in _normalised_items(3)]))
    darker = _collate(gamma=0.0, blur=0.0, detector_resolution=0.0, detector_noise=0.0, clip_highlights=0.5)
    clipped = darker(_normalised_items(2))["image"] * np.mean(WEIGHTS.std) + np.mean(WEIGHTS.mean)  # back to [0, 1]
    assert float(clipped.max()) <= 1.0 + 1e-5 and float(clipped.min()) >= 0.0


def test_a_seed_repeats_the_draws() -> None:
    def draws(seed: int) -> torch.Tensor:
        collate = _collate(seed)
        return torch.stack([collate(_normalised_items(2))["image"] for _ in range(3)])

    assert torch.equal(draws(1), draws(1)) and not torch.equal(draws(1), draws(2))


def test_pipeline_moves_the_acquisition_steps_from_each_image_to_the_batch() -> None:
    per_batch = RadiographPipeline(image_size=32, augment=SITE)
    assert not any(isinstance(t, RandDetectord) for t in per_batch.train_transforms(WEIGHTS).transforms)
    assert isinstance(per_batch.batch_augmentation(WEIGHTS), SiteBatches)
    per_image = RadiographPipeline(image_size=32, augment={**SITE, "acquisition_per_batch": False})
    assert any(isinstance(t, RandDetectord) for t in per_image.train_transforms(WEIGHTS).transforms)
    assert per_image.batch_augmentation(WEIGHTS) is None
    nothing_to_draw = {"acquisition_per_batch": True}  # no acquisition step configured: MONAI's collation
    assert RadiographPipeline(image_size=32, augment=nothing_to_draw).batch_augmentation(WEIGHTS) is None


def test_training_loader_collates_by_site_and_its_generators_are_saved_for_resume(tmp_path: Path, write_png) -> None:
    for label in ("A", "B"):
        for i in range(4):
            write_png(tmp_path / "data" / label / f"p{label}{i}_x.png", shape=(32, 32), seed=i)
    data = ImageClassificationData(root=str(tmp_path / "data"), image_size=32, cache="none", val_fraction=0.25,
                                   batch_size=4, augment=SITE)
    data.setup()
    torch.manual_seed(0)
    train, val = data.loaders(WEIGHTS)
    assert isinstance(train.collate_fn, SiteBatches) and not isinstance(val.collate_fn, SiteBatches)
    batch = next(iter(train))
    assert batch["image"].shape[1:] == (1, 32, 32) and type(batch["image"]) is torch.Tensor
    found = random_transforms([train.dataset.transform, train.collate_fn])
    assert any(isinstance(t, RandDetectord) for t in found)  # its state goes into the training state
    plain, _ = data.loaders(WEIGHTS, augment=False)
    assert not isinstance(plain.collate_fn, SiteBatches)
