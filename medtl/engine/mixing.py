"""MixUp and CutMix of a training batch (MONAI's :class:`~monai.transforms.MixUp` and :class:`~monai.transforms.CutMix`).

Each image of a batch is mixed with another image of the same batch (a random pairing), with a weight ``w`` drawn
from ``Beta(alpha, alpha)``: MixUp blends the two images, ``w x + (1 - w) x'``; CutMix pastes a box of the partner
covering about ``1 - w`` of the image. The targets become ``w y + (1 - w) y'`` (one-hot ``y``), and the loss is the
cross-entropy against them. ``trainer.mixing=mixup|cutmix`` (``trainer.mixing_alpha``) turns it on for every step
that trains on images; a head trained on cached features sees no mixing.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.transforms import CutMix, MixUp
from monai.transforms.regularization.array import Mixer

from medtl.errors import MedtlError

__all__ = ["BatchMixing", "MIXERS"]

MIXERS: dict[str, type[Mixer]] = {"mixup": MixUp, "cutmix": CutMix}


class BatchMixing:
    """Mix a batch's images, then its labels with the same pairs and weights.

    Args:
        kind: ``mixup`` or ``cutmix``.
        alpha: the Beta distribution's parameter (0.2-0.4 is usual for MixUp, 1.0 for CutMix).
        seed: seeds the pairings and weights (the trainer draws it from torch's seeded generator).
    """

    def __init__(self, kind: str, alpha: float, seed: int) -> None:
        if kind not in MIXERS:
            raise MedtlError(f"trainer.mixing={kind!r} is not known; choose one of {sorted(MIXERS)} or null for none")
        if not alpha > 0:
            raise MedtlError(f"trainer.mixing_alpha={alpha} must be > 0 (e.g. 0.4 for mixup, 1.0 for cutmix)")
        self.kind, self.alpha = kind, float(alpha)
        self._random = np.random.RandomState(seed)
        self._mixer: Mixer | None = None

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W[, D])`` images, each mixed with a partner of the same batch (same shape)."""
        self._mixer = MIXERS[self.kind](batch_size=len(images), alpha=self.alpha)
        self._mixer.set_random_state(state=self._random)
        with warnings.catch_warnings():  # MONAI's CutMix indexes its box with a list of slices, which torch warns of
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            return self._mixer(images)

    def targets(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``(B,)`` class indices -> ``(B, K)`` targets mixed like the last :meth:`images` call's batch."""
        if self._mixer is None:
            raise RuntimeError("BatchMixing.targets needs a batch mixed by BatchMixing.images first")
        one_hot = torch.nn.functional.one_hot(labels, num_classes).float()  # (B, K)
        if isinstance(self._mixer, CutMix):
            return self._mixer.apply_on_labels(one_hot)
        return self._mixer.apply(one_hot[:, :, None, None])[:, :, 0, 0]  # MixUp wants (B, K, 1, 1)
