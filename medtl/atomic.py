"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

__all__ = ["write_text_atomic", "write_csv_atomic", "ensure_folder"]


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """``frame`` as CSV (no index), written atomically."""
    return write_text_atomic(path, frame.to_csv(index=False))


def ensure_folder(target: str | Path, marker: str, write: Callable[[Path], None]) -> Path:
    """``target / marker``, after ``write(folder)`` filled a temporary sibling renamed to ``target`` when the marker
    was missing: the folder appears complete or not at all. Two processes racing both write; one copy is kept."""
    target = Path(target)
    done = target / marker
    if done.is_file():
        return done
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        write(staging)
        os.replace(staging, target)
    except OSError:
        if not done.is_file():  # another process did not win the race either
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return done
