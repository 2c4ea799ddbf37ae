"""Advisory file locks: one live writer per results directory, one pretraining per preset.

A lock is a :mod:`filelock` lock on a file (``flock`` on POSIX, ``msvcrt.locking`` on Windows),
so the operating system lets go of it when its holder dies, however it dies (``kill -9``
included): a dead process never holds a lock. The file also records who holds it (pid, host,
command), for the message that refuses a second writer; where the system keeps other processes
from reading a locked file (Windows), the message says less.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from deadzone.errors import DeadzoneError


def holder() -> dict:
    """Who this process is, as recorded in a lock file."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def describe(info: dict) -> str:
    """``pid 123 on host (command)`` from a lock file's record."""
    text = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    return f"{text} ({info['command']})" if info.get("command") else text


@contextmanager
def file_lock(path: str | Path, *, wait: bool, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` inside the block.

    ``wait=False`` refuses at once when another live process holds it, with a
    :class:`DeadzoneError` naming that process and ``what`` is locked; ``wait=True`` blocks
    until the holder lets go. The lock file itself is left in place (removing it would race
    with a process about to lock it).
    """
    path = Path(path)
    lock = FileLock(path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        raise DeadzoneError(
            f"{what or path} is in use by {describe(_read(path))}; wait for it to finish, "
            "or choose another output directory"
        ) from None
    except OSError as e:
        raise DeadzoneError(f"cannot create the lock file {path}: {e.strerror}") from None
    try:
        _record(path, json.dumps(holder()) + "\n")
        yield
    finally:
        _record(path, "")
        lock.release()


def _record(path: Path, text: str) -> None:
    """Replace the lock file's record with ``text``; best effort (a lock held elsewhere in this
    process may keep the bytes from being written on Windows)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, text.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def _read(path: Path) -> dict:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
