"""Atomic file writing: results are never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deadzone.errors import DeadzoneError


def ensure_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) and check a file can be written there, or fail in one line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".deadzone-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DeadzoneError(f"cannot write to output directory {path}: {e.strerror}") from None
    return path


def check_file_path(path: str | Path) -> Path:
    """``path`` as a file to (over)write, or a one-line error if it is a directory."""
    path = Path(path)
    if path.is_dir():
        raise DeadzoneError(f"{path} is a directory; give a file name")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_permissions(path: str | Path) -> None:
    """Give ``path`` and everything below it the modes of ordinary new files and directories
    under the umask (``mkdtemp`` and ``mkstemp`` create them private)."""
    path = Path(path)
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds."""
    path = check_file_path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # as an ordinary new file, not mkstemp's 0600
        os.replace(tmp_path, path)
    except OSError as e:  # a full disk, a quota: the file at ``path`` is left as it was
        raise DeadzoneError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> object:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/deadzone``, else ``~/.cache/deadzone``: the builtin models and the
    corpus's parsed pairs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deadzone"
