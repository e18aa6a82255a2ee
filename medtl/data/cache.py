"""A disk cache that names, deletes and rebuilds a damaged entry instead of failing every later run."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from monai.data import PersistentDataset

__all__ = ["CheckedPersistentDataset"]

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
