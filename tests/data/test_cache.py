"""A damaged disk-cache entry is named, deleted and rebuilt; it never breaks later runs."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from medtl.data.cache import CheckedPersistentDataset
from medtl.data.readers import DicomOptions
from medtl.data.transforms import IntensityConfig, eval_transforms
from medtl.models.registry import WeightsInfo

WEIGHTS = WeightsInfo(source="test", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), in_channels=1)


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 half a zip", b"\x80\x04garbage"])
def test_zero_byte_or_truncated_entries_are_rebuilt(tmp_path: Path, write_png, caplog, damage: bytes) -> None:
    items = [{"image": str(write_png(tmp_path / f"{i}.png", seed=i)), "path": f"img{i}"} for i in range(3)]
    transform = eval_transforms(32, WEIGHTS, IntensityConfig(), DicomOptions())
    cache = tmp_path / "cache"
    first = [np.asarray(x["image"]) for x in CheckedPersistentDataset([dict(i) for i in items], transform, cache)]
    entries = sorted(cache.glob("*.pt"))
    assert len(entries) == 3
    entries[1].write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="medtl.data.cache"):
        again = [np.asarray(x["image"]) for x in CheckedPersistentDataset([dict(i) for i in items], transform, cache)]
    for before, after in zip(first, again):
        np.testing.assert_array_equal(before, after)
    assert any(str(entries[1]) in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    assert entries[1].stat().st_size > 100  # rewritten whole
