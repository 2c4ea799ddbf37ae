"""The runnable examples in docs/ run as their pages show them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

DOCS = Path(__file__).parent.parent / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_freezes(script: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "units frozen" in done.stdout and "trainable at the end" in done.stdout


class Step(NamedTuple):
    """One step of the walkthrough: a file it shows (``name``, ``body``) or a command it runs."""

    name: str | None
    body: str


def walkthrough_steps(text: str) -> list[Step]:
    """The files (a ```python block right after a line ending in "`NAME.py`:") and the commands
    (``$ `` lines of the other blocks) of docs/walkthrough.md, in the order they appear."""
    steps, lines, before = [], text.splitlines(), ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = lines.index("```", i + 1)
            block = lines[i + 1 : end]
            named = re.search(r"`([\w.]+\.py)`:$", before)
            if line == "```python" and named:
                steps.append(Step(named.group(1), "\n".join(block) + "\n"))
            elif line == "```":
                steps += [Step(None, b[2:]) for b in block if b.startswith("$ ")]
            i = end
        elif line.strip():
            before = line.strip()
        i += 1
    return steps


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path: Path):
    """Every command of docs/walkthrough.md, in an empty directory, exits 0; the transcript
    (each command's stdout and wall time) is left in the directory."""
    steps = walkthrough_steps((DOCS / "walkthrough.md").read_text())
    assert sum(s.name is None for s in steps) >= 7 and {"make_model.py", "finetune.py"} <= {
        s.name for s in steps
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    transcript = []
    for step in steps:
        if step.name:
            (tmp_path / step.name).write_text(step.body)
            continue
        start = time.perf_counter()
        done = subprocess.run(
            ["bash", "-c", step.body], cwd=tmp_path, capture_output=True, text=True, env=env,
            timeout=600,
        )  # fmt: skip
        transcript.append(f"$ {step.body}\n{done.stdout}({time.perf_counter() - start:.1f} s)\n")
        (tmp_path / "transcript.txt").write_text("\n".join(transcript))
        assert done.returncode == 0, f"{step.body}\n{done.stderr[-2000:]}"
    assert (tmp_path / "scan" / "plan.json").is_file()
    assert (tmp_path / "tuned" / "model.safetensors").is_file()
