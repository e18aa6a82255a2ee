"""Where a result came from: the code's git commit, the machine, and a Markdown table for benchmark write-ups."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pandas as pd
import torch

__all__ = ["git_commit", "machine_description", "markdown_table"]


def git_commit(path: str | Path) -> str:
    """Short commit hash of the repository holding ``path`` (``+dirty`` with uncommitted changes), or ``unknown``."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_description() -> str:
    """``x86_64, 2 CPU cores, torch 2.13.0+cpu, 2 threads`` (plus the GPU's name when CUDA is there)."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads{gpu}")


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a GitHub Markdown table, floats to 3 decimals."""
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    return header + "\n".join("| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False))
