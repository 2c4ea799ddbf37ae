"""No module of deadzone imports itself back, at the top of a file or inside a function."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def imports(src: Path) -> dict[str, set[str]]:
    """Module name -> the deadzone modules it imports anywhere in its file (its own package
    excepted: Python has it before the module)."""
    files = {}
    for path in (src / "deadzone").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deadzone"):
                named = (f"{node.module}.{a.name}" for a in node.names)  # a module, or a name
                found |= {m if m in files else node.module for m in named}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in files and not f"{name}.".startswith(f"{m}.")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}
    for start in sorted(graph):
        stack = [(start, iter(sorted(graph[start])))]
        path, state[start] = [start], "open"
        while stack:
            node, successors = stack[-1]
            nxt = next(successors, None)
            if nxt is None:
                state[node] = "done"
                stack.pop()
                path.pop()
            elif state.get(nxt) == "open":
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                state[nxt] = "open"
                path.append(nxt)
                stack.append((nxt, iter(sorted(graph[nxt]))))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    graph = imports(SRC)
    assert "deadzone.report.build" in graph and "deadzone.data.sft" in graph
    assert cycles(graph) == []


def test_the_demos_report_imports_alone():
    """It imported report.build, which imported it back (a fresh interpreter: nothing loaded)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    code = "import deadzone.report.demo"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
