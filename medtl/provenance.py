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
    """``x86_64 (AMD EPYC), 2 CPU cores, torch 2.13.0+cpu, 2 threads`` (plus the GPU's name when CUDA is there).

    The CPU's model matters to figures: oneDNN picks other kernels, and bfloat16 paths run only where native."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    model = cpu_model()
    return (f"{platform.machine()}{f' ({model})' if model else ''}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``, else ``""``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a GitHub Markdown table, floats to 3 decimals."""
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    return header + "\n".join("| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False))
