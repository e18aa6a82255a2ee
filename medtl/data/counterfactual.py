"""Counterfactual augmentation: move a property that carries a shortcut across the classes.

When the data check finds that the intensity histogram tells the label (``carried by intensity histogram`` in its
report: each class came mostly from a collection with its own scanner, protocol and processing), a model can learn
the grey-level curve instead of the finding. :class:`RandCounterfactualHistogramd` gives a training image, with some
probability, the grey-level distribution of a training image *of another class*: an image whose label is
``tumour`` is shown with a ``no tumour`` collection's histogram and the other way round, so the histogram no
longer says the label and the model has to look at the anatomy. The mapping is monotone (quantile matching), so
the image's structures keep their order of brightness.

The references are the quantile curves of the training images the transform has already seen, kept per label in
a reservoir of ``bank_size`` curves (reservoir sampling, so every image seen is equally likely to be kept); no
separate pass over the data. The reservoirs are saved with the training state (``state_dict``), so a resumed run
draws what the uninterrupted one would. Until another label has been seen the image is left alone.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform

__all__ = ["MatchHistogram", "RandCounterfactualHistogramd", "quantile_curve"]

LEVELS = 65  # quantiles 0, 1/64, ..., 1


def quantile_curve(image: np.ndarray | torch.Tensor, levels: int = LEVELS) -> np.ndarray:
    """The ``(levels,)`` grey levels at the quantiles ``0, 1/(levels-1), ..., 1`` of ``image`` (any shape)."""
    values = np.asarray(image, dtype=np.float32).ravel()
    return np.quantile(values, np.linspace(0.0, 1.0, levels)).astype(np.float32)


class MatchHistogram(Transform):
    """Map an image's grey levels monotonically so that its quantiles become ``reference`` ``(levels,)``:
    ``(C, H, W[, D])`` -> the same shape and type. A pixel at its image's quantile ``q`` takes the reference's
    grey level at ``q`` (linear between the reference's levels)."""

    def __init__(self, reference: np.ndarray) -> None:
        self.reference = np.asarray(reference, dtype=np.float32)

    def __call__(self, image: np.ndarray | torch.Tensor, source: np.ndarray | None = None) -> np.ndarray | torch.Tensor:
        """``source``: the image's own :func:`quantile_curve`, when the caller has it already."""
        values = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        source = quantile_curve(values, len(self.reference)) if source is None else source
        # equal quantiles (a black background is a third of an MRI slice) must still rise for np.interp
        source = source + np.arange(len(source), dtype=np.float32) * 1e-6
        mapped = np.interp(values, source, self.reference).astype(values.dtype, copy=False)
        return torch.as_tensor(mapped) if isinstance(image, torch.Tensor) else mapped


class RandCounterfactualHistogramd(RandomizableTransform, MapTransform):
    """With probability ``prob``, give ``data[keys]`` ``(C, H, W[, D])`` the grey-level distribution of a training
    image whose ``data[label_key]`` differs (:class:`MatchHistogram` to a curve drawn from the other labels'
    reservoirs). Every image passing through first adds its own quantile curve to its label's reservoir of
    ``bank_size``."""

    def __init__(self, keys: KeysCollection, label_key: str = "label", prob: float = 0.5, bank_size: int = 256,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if bank_size < 1:
            raise ValueError(f"bank_size={bank_size} must be at least 1 (curves kept per label)")
        self.label_key, self.bank_size = label_key, bank_size
        self.banks: dict[int, list[np.ndarray]] = {}
        self.seen: dict[int, int] = {}

    def __call__(self, data: Mapping[Hashable, np.ndarray | torch.Tensor]) -> dict:
        out = dict(data)
        label = int(np.asarray(out[self.label_key]).reshape(-1)[0])
        first = next(iter(self.key_iterator(out)), None)
        if first is None or label < 0:  # an unlabelled (target site) image has no class to move across
            return out
        own = quantile_curve(out[first])
        self._remember(label, own)
        self.randomize(None)
        reference = self._other_class_curve(label) if self._do_transform else None
        if reference is None:
            return out
        match = MatchHistogram(reference)
        for key in self.key_iterator(out):
            out[key] = match(out[key], own if key == first else None)
        return out

    def _other_class_curve(self, label: int) -> np.ndarray | None:
        """A curve drawn uniformly from the reservoirs of the labels other than ``label`` (no list built per image);
        ``None`` before another label has been seen."""
        sizes = [(other, len(bank)) for other, bank in self.banks.items() if other != label]
        total = sum(size for _, size in sizes)
        if total == 0:
            return None
        pick = self.R.randint(total)
        for other, size in sizes:
            if pick < size:
                return self.banks[other][pick]
            pick -= size
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The reservoirs as tensors (saved with a training state, so a resumed run draws what it would have):
        ``labels`` ``(L,)``, ``seen`` ``(L,)``, ``sizes`` ``(L,)``, ``curves`` ``(sum sizes, levels)``."""
        labels = sorted(self.banks)
        curves = [curve for label in labels for curve in self.banks[label]]
        return {"labels": torch.tensor(labels, dtype=torch.long),
                "seen": torch.tensor([self.seen[label] for label in labels], dtype=torch.long),
                "sizes": torch.tensor([len(self.banks[label]) for label in labels], dtype=torch.long),
                "curves": torch.from_numpy(np.stack(curves)) if curves else torch.zeros(0, LEVELS)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put back what :meth:`state_dict` saved."""
        curves = state["curves"].numpy()
        self.banks, self.seen, start = {}, {}, 0
        for label, seen, size in zip(state["labels"].tolist(), state["seen"].tolist(), state["sizes"].tolist()):
            self.banks[label] = [curves[i] for i in range(start, start + size)]
            self.seen[label], start = seen, start + size

    def _remember(self, label: int, curve: np.ndarray) -> None:
        """Reservoir sampling: after ``n`` images of ``label``, each is in its bank with probability bank/n."""
        bank, count = self.banks.setdefault(label, []), self.seen.get(label, 0) + 1
        self.seen[label] = count
        if len(bank) < self.bank_size:
            bank.append(curve)
        else:
            slot = self.R.randint(count)
            if slot < self.bank_size:
                bank[slot] = curve
