"""Advisory file locks: one live writer per results directory, one pretraining per preset.

A lock is an ``flock`` on a file, so the kernel lets go of it when its holder dies, however it
dies (``kill -9`` included): a dead process never holds a lock. The file also records who holds
it (pid, host, command), for the message that refuses a second writer.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DeadzoneError(f"cannot create the lock file {path}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise DeadzoneError(
                f"{what or path} is in use by {describe(_read(fd))}; wait for it to finish, "
                "or choose another output directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder()) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
