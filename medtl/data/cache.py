"""Caches of decoded inputs: a disk cache that names, deletes and rebuilds a damaged entry instead of failing every
later run, and the check that a memory cache will fit before it is filled."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import PersistentDataset

from medtl.errors import MedtlError

__all__ = ["CheckedPersistentDataset", "refuse_if_memory_short", "available_memory", "MEMORY_CACHE_SHARE"]

MEMORY_CACHE_SHARE = 0.8  # of the memory free now; the rest is left for the model, its optimiser and the loaders

log = logging.getLogger(__name__)


class CheckedPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` whose cache files are checked when read.

    A zero-byte, truncated or otherwise unreadable entry (a run killed while writing, a full disk) is logged
    with the cache file and the image it belongs to, deleted, and computed again. Entries are read with
    ``weights_only=True``, as MONAI does: a cache file never runs code.
    """

    def _cachecheck(self, item_transformed: Any) -> Any:
        if self.cache_dir is not None:
            key = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
            hashfile = Path(self.cache_dir) / f"{key}.pt"
            if hashfile.is_file():
                try:
                    return torch.load(hashfile, weights_only=self.weights_only)
                except Exception as exc:  # noqa: BLE001 - any failure means the entry cannot be used
                    image = item_transformed.get("path", "?") if isinstance(item_transformed, dict) else "?"
                    log.warning("disk cache entry %s (for %s) is damaged (%s): deleted, rebuilding it", hashfile,
                                image, type(exc).__name__)
                    hashfile.unlink(missing_ok=True)
        return super()._cachecheck(item_transformed)


def refuse_if_memory_short(split: str, items: list[dict[str, Any]], transform: Any) -> None:
    """Before a memory cache of ``items`` is filled: decode the first one, multiply its size by the count, and stop
    with one line naming ``data.cache=disk`` when that is more than :data:`MEMORY_CACHE_SHARE` of the free memory
    (a cache that does not fit ends in swapping or the kernel's OOM killer hours later, not in an error)."""
    if not items:
        return
    image = transform(dict(items[0]))["image"]  # (C, *spatial), as cached
    per_item = int(np.prod(image.shape)) * image.element_size() if isinstance(image, torch.Tensor) else image.nbytes
    needed, free = per_item * len(items), available_memory()
    if free is not None and needed > MEMORY_CACHE_SHARE * free:
        raise MedtlError(f"data.cache=memory: the '{split}' split would hold {_size(needed)} of decoded inputs "
                         f"({len(items)} x {tuple(image.shape)}), more than {MEMORY_CACHE_SHARE:.0%} of the "
                         f"{_size(free)} free; use data.cache=disk (decoded once to data.cache_dir, streamed "
                         "from there) or data.cache=none")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def available_memory() -> int | None:
    """Bytes this process may still fill: the kernel's ``MemAvailable``, lowered to a cgroup (container) limit's
    headroom when there is one; ``None`` where neither can be read."""
    free = _meminfo_available()
    limit, usage = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and usage is not None:
        free = min(free, limit - usage) if free is not None else limit - usage
    return free


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            line = next((row for row in meminfo if row.startswith("MemAvailable:")), None)
    except OSError:
        return None
    return int(line.split()[1]) * 1024 if line else None


def _read_int(path: str) -> int | None:
    """An integer file (cgroup v2 writes ``max`` for no limit): ``None`` when absent, unlimited or unreadable."""
    try:
        text = Path(path).read_text().strip()
    except OSError:  # absent (no cgroup v2) or unreadable
        return None
    return int(text) if text.isdigit() else None
