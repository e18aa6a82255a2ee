from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from medtl.data import ImageClassificationData
from medtl.errors import MedtlError
from medtl.models.registry import WeightsInfo
from tests.objectives.test_shortcut_training import confounded_set


def _data(tmp_path: Path, **options: object) -> ImageClassificationData:
    data = ImageClassificationData(manifest=str(confounded_set(tmp_path / "set", n=40)), positive_class="lesion",
                                   image_size=32, batch_size=8, cache="none", **options)
    data.setup()
    return data


def test_balanced_sampling_draws_every_collection_class_group_equally_often(tmp_path: Path) -> None:
    data = _data(tmp_path, sampling="balanced")
    data.run_checks()
    train = data.frame.query("split == 'train'").reset_index(drop=True)
    groups = (train["collection"] + "|" + train["label"]).tolist()
    assert min(Counter(groups).values()) * 5 < max(Counter(groups).values())  # 90/10 confounding: groups unequal
    loader = data.train_loader(data.dataset("train", data.transform(WeightsInfo(source="test"), augment=False),
                                            WeightsInfo(source="test")))
    torch.manual_seed(0)
    drawn = Counter(groups[i] for _ in range(40) for i in loader.sampler)
    shares = [count / sum(drawn.values()) for count in drawn.values()]
    assert len(drawn) == 4 and max(shares) - min(shares) < 0.05  # 0.25 each


def test_balanced_sampling_without_collections_and_unknown_sampling_are_one_line_errors(tmp_path: Path) -> None:
    data = _data(tmp_path, sampling="balanced", check=False)
    data.run_checks()
    with pytest.raises(MedtlError, match="data.sampling=balanced needs each training image's collection"):
        data.train_loader(data.dataset("train", data.transform(WeightsInfo(source="test"), augment=False),
                                       WeightsInfo(source="test")))
    with pytest.raises(MedtlError, match="data.sampling='even' is unknown; use shuffle or balanced"):
        ImageClassificationData(sampling="even")
