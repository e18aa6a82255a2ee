"""A damaged disk-cache entry is named, deleted and rebuilt; it never breaks later runs."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from medtl.data.cache import CheckedPersistentDataset
from medtl.data.readers import DicomOptions
from medtl.data.transforms import IntensityConfig, eval_transforms
from medtl.errors import MedtlError
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


def test_a_memory_cache_that_would_not_fit_is_refused_naming_the_disk_cache(tmp_path: Path, write_png,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from medtl.data import cache

    items = [{"image": str(write_png(tmp_path / f"{i}.png", seed=i)), "path": f"img{i}"} for i in range(3)]
    transform = eval_transforms(64, WEIGHTS, IntensityConfig(), DicomOptions())
    per_item = 1 * 64 * 64 * 4  # (C, H, W) float32
    monkeypatch.setattr(cache, "available_memory", lambda: int(per_item * 3 / cache.MEMORY_CACHE_SHARE) + 1)
    cache.refuse_if_memory_short("train", items, transform)  # just fits
    monkeypatch.setattr(cache, "available_memory", lambda: int(per_item * 3 / cache.MEMORY_CACHE_SHARE) - 64)
    with pytest.raises(MedtlError, match=r"data.cache=memory: the 'train' split would hold .* \(3 x \(1, 64, 64\)\).*data.cache=disk"):
        cache.refuse_if_memory_short("train", items, transform)


def test_available_memory_is_read_from_the_kernel() -> None:
    from medtl.data.cache import available_memory

    free = available_memory()
    assert free is not None and 2**26 < free < 2**44  # between 64 MiB and 16 TiB on any machine running tests
