"""What produced a result: library versions and the git revision of the working directory."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch
import transformers

from deadzone import __version__


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deadzone": __version__,
    }


def git_state() -> dict[str, str | bool] | None:
    """``{"revision", "dirty"}`` of the git checkout holding deadzone's source, if any."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        revision = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"revision": revision, "dirty": dirty}
