"""Where a result came from: the code's git commit, and a Markdown table for benchmark write-ups."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd

__all__ = ["git_commit", "markdown_table"]


def git_commit(path: str | Path) -> str:
    """Short commit hash of the repository holding ``path`` (``+dirty`` with uncommitted changes), or ``unknown``."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a GitHub Markdown table, floats to 3 decimals."""
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    return header + "\n".join("| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False))
