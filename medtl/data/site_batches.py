"""Training batches that each look like one other site: the acquisition augmentation drawn once per batch.

BatchNorm normalises a training batch with the batch's own statistics. When every image of a batch gets its own
contrast curve, blur and detector, those statistics are of a mixture that no real site has; at a new site AdaBN
(:mod:`medtl.adaptation.adabn`) normalises with statistics of that one site, which the head never saw, and the
augmentation and AdaBN work against each other (README, *Generalisation*). :class:`SiteBatches` draws the
acquisition (``data.augment.clip_highlights``, ``gamma``, ``blur``, ``detector_*``) once per batch, so that in
training, as at a site under AdaBN, features are normalised over images of one acquisition.

It is the training loader's ``collate_fn``: MONAI's collation, then the shared draw, on the normalised batch
``(B, C, H, W)`` taken back to the [0, 1] range the augmentation works in and normalised again.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import list_data_collate
from monai.transforms import Randomizable
from monai.utils import convert_to_tensor
from torch.utils.data import get_worker_info

__all__ = ["SiteBatches"]

IMAGE = "image"


class SiteBatches(Randomizable):
    """Collate items into a batch, then apply ``transforms`` once to the whole batch (one random draw each).

    Args:
        transforms: dictionary transforms on ``{"image": (B * C, H, W)}`` in [0, 1]; each batch's images are its
            channels, so a spatial transform filters each image and a random one draws once for all of them.
        subtrahend, divisor: the normalisation the batch arrives in (``(x - subtrahend) / divisor``).
    """

    def __init__(self, transforms: Sequence[Any], subtrahend: float, divisor: float) -> None:
        self.transforms = list(transforms)
        self.subtrahend, self.divisor = float(subtrahend), float(divisor)
        self._worker: int | None = None

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> SiteBatches:
        super().set_random_state(seed, state)
        for index, transform in enumerate(self.transforms):
            if isinstance(transform, Randomizable):
                transform.set_random_state(None if seed is None else (seed + index) % 2**32, state)
        return self

    def randomize(self, data: Any) -> None:
        """Each transform draws for itself when it is called."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        self._seed_for_worker()
        batch = list_data_collate(items)
        images = torch.as_tensor(batch[IMAGE])  # (B, C, H, W), normalised
        stacked = images.reshape(-1, *images.shape[2:]) * self.divisor + self.subtrahend  # (B * C, H, W) in [0, 1]
        data: dict[str, Any] = {IMAGE: stacked}
        for transform in self.transforms:
            data = transform(data)
        # MONAI's transforms hand back a MetaTensor: the model and the training state get a plain tensor (a
        # MetaTensor costs every operation of the forward pass, and its metadata would reach the saved state)
        shifted = convert_to_tensor(data[IMAGE], dtype=torch.float32, track_meta=False)
        batch[IMAGE] = (shifted.reshape(images.shape) - self.subtrahend) / self.divisor  # (B, C, H, W)
        return batch

    def _seed_for_worker(self) -> None:
        """In a loader worker, a generator of the worker's own (every worker starts from the same copy)."""
        info = get_worker_info()
        if info is not None and self._worker != info.id:
            self._worker = info.id
            self.set_random_state(seed=info.seed % 2**32)
