"""Read a ``--data`` spec into tables of raw rows, with the ``datasets`` library.

A spec is, in the order it is recognised:

- ``builtin:docstrings`` — the embedded prompt → completion set (:mod:`deadzone.data.corpus`),
  which carries its own ``train`` and ``eval`` splits;
- an existing file: ``.txt`` (one row ``{"text"}`` per paragraph: paragraphs are separated by a
  blank line, their surrounding newlines are dropped), ``.jsonl`` / ``.json`` (JSON lines, or
  one JSON array of objects), ``.csv`` (every value read as a string, empty fields as ``""``)
  or ``.parquet``;
- an existing directory: every such file below it (hidden ones skipped), in path order;
- a ``datasets`` hub id, ``owner/name`` or ``owner/name:split`` (``train`` by default; any
  split expression ``datasets`` accepts, e.g. ``test`` or ``train[:1000]``).

Each file becomes one :class:`Table`, so an error can name the file and the line or row.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from deadzone.errors import DeadzoneError

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("docstrings",)
# File suffix -> ``datasets`` packaged builder.
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass
class Table:
    """The raw rows of one file (or hub split, or builtin split), in order."""

    source: str
    columns: list[str]
    rows: list[dict]
    # Physical line of each row, known for JSON lines files; rows are counted otherwise.
    lines: list[int] | None = None

    def where(self, index: int) -> str:
        """Where row ``index`` (0-based) is, for an error message: ``"a.jsonl, line 3"``."""
        if self.lines is not None:
            return f"{self.source}, line {self.lines[index]}"
        return f"{self.source}, row {index + 1}"


def is_builtin(spec: str) -> bool:
    return spec.startswith(BUILTIN_PREFIX)


def read_spec(spec: str, split: str = "train") -> list[Table]:
    """The tables of ``spec``; ``split`` (``"train"`` / ``"eval"``) matters only for builtins."""
    if not spec.strip():
        raise DeadzoneError("empty data spec")
    if is_builtin(spec):
        return [read_builtin(spec.removeprefix(BUILTIN_PREFIX), split)]
    path = Path(spec).expanduser()
    if path.is_dir():
        return read_directory(path)
    if path.exists():
        return [read_file(path)]
    if path.suffix.lower() in BUILDERS or spec.startswith((".", "/", "~")) or "\\" in spec:
        raise DeadzoneError(f"no such data file or directory: {spec}")
    hub_id, _, hub_split = spec.partition(":")
    if HUB_ID.fullmatch(hub_id):
        return [read_hub(hub_id, hub_split or "train")]
    raise DeadzoneError(
        f"data spec {spec!r} is not a file, a directory, a hub id or one of "
        + ", ".join(BUILTIN_PREFIX + b for b in BUILTINS)
    )


def read_builtin(name: str, split: str) -> Table:
    if name not in BUILTINS:
        known = ", ".join(BUILTIN_PREFIX + b for b in BUILTINS)
        raise DeadzoneError(f"unknown builtin data set {BUILTIN_PREFIX}{name} (known: {known})")
    from deadzone.data.corpus import docstring_pairs

    rows = docstring_pairs(split)
    return Table(f"{BUILTIN_PREFIX}{name} ({split})", ["prompt", "completion", "module"], rows)


def read_directory(path: Path) -> list[Table]:
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in BUILDERS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        kinds = " / ".join(BUILDERS)
        raise DeadzoneError(f"no data files ({kinds}) in directory {path}")
    return [read_file(p) for p in files]


def read_file(path: Path) -> Table:
    """One local file as a table; unreadable content is a one-line error naming the file."""
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        kinds = ", ".join(BUILDERS)
        raise DeadzoneError(f"{path}: unsupported data file type (expected one of {kinds})")
    if path.stat().st_size == 0:
        return Table(str(path), [], [])
    if builder != "parquet":  # text formats: name the line of a byte that is not UTF-8
        _check_utf8(path)
    options: dict = {}
    if builder == "text":
        options = {"sample_by": "paragraph"}
    elif builder == "csv":
        options = _csv_options(path)
    try:
        with _quiet_datasets():
            import datasets

            dataset = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as e:  # datasets raises many types; all mean the file cannot be read
        problem = (_json_problem(path) if builder == "json" else None) or _innermost(e)
        raise DeadzoneError(f"{path}: {problem}") from None
    rows = dataset.to_list()
    if builder == "text":
        rows = [{"text": p} for r in rows if (p := r["text"].strip("\r\n")).strip()]
    lines = _json_lines(path, len(rows)) if builder == "json" else None
    return Table(str(path), list(dataset.column_names), rows, lines)


def read_hub(hub_id: str, split: str) -> Table:
    """A hub split; offline (``HF_HUB_OFFLINE``) or with the hub unreachable, only the local
    ``datasets`` cache is tried, so that an unknown name fails at once, not after retries."""
    source = f"{hub_id}:{split}"
    why_offline = _offline_reason()
    try:
        with _quiet_datasets(), _offline(why_offline is not None):
            import datasets

            dataset = datasets.load_dataset(hub_id, split=split)
    except Exception as e:
        reason = f"{why_offline}, and it is not in the local cache" if why_offline else None
        raise DeadzoneError(
            f"cannot load data set {source} from the Hugging Face hub (no local file or "
            f"directory has that name): {reason or _innermost(e)}"
        ) from None
    return Table(source, list(dataset.column_names), dataset.to_list())


def update_hash(hasher: hashlib._Hash, table: Table) -> None:
    """Feed ``table``'s rows, canonically serialised, to ``hasher`` (file names excluded)."""
    for row in table.rows:
        hasher.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        hasher.update(b"\n")


def _csv_options(path: Path) -> dict:
    """Read every CSV column as a string and keep empty fields as ``""`` (not NaN); a leading
    byte-order mark is dropped."""
    import datasets

    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), [])
    features = datasets.Features({name: datasets.Value("string") for name in header})
    # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the header
    return {"features": features, "na_filter": False, "encoding": "utf-8-sig"}


def _check_utf8(path: Path) -> None:
    """A one-line error naming the line of the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DeadzoneError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
            "save the file as UTF-8"
        ) from None


def _json_lines(path: Path, n_rows: int) -> list[int] | None:
    """Line numbers of the non-blank lines of a JSON lines file, if they are its rows."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    if data.lstrip().startswith(b"["):
        return None
    lines = [n for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]
    return lines if len(lines) == n_rows else None


def _json_problem(path: Path) -> str | None:
    """Why a JSON / JSON lines file could not be loaded, with its line, if that can be found."""
    text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("["):
            return f"line {e.lineno}: invalid JSON ({e.msg})"
    else:
        if isinstance(whole, list):
            for i, item in enumerate(whole, 1):
                if not isinstance(item, dict):
                    return f"row {i}: expected a JSON object, got {type(item).__name__}"
            return None
        if isinstance(whole, dict) and text.count("\n") > 1:
            return "one JSON object; expected an array of row objects, or one object per line"
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {n}: invalid JSON ({e.msg})"
        if not isinstance(value, dict):
            return f"line {n}: expected a JSON object, got {type(value).__name__}"
    return None


def _innermost(error: BaseException) -> str:
    """The message of the root cause of ``error``, on one line."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    message = " ".join(str(error).split()) or type(error).__name__
    return message if len(message) <= 300 else message[:297] + "..."


HUB_PROBE_SECONDS = 3.0
_TRUE = ("1", "on", "yes", "true")


def _offline_reason() -> str | None:
    """Why the hub cannot be asked: offline mode is set, or its host does not answer at once."""
    import huggingface_hub.constants as hub

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name} is set"
    if hub.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(hub.ENDPOINT)
    proxy = getproxies().get(url.scheme)
    if proxy and not proxy_bypass(url.hostname or ""):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # the hub is behind it
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except (OSError, ValueError) as e:
        return f"the hub at {hub.ENDPOINT} is unreachable ({getattr(e, 'strerror', None) or e})"
    return None


@contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """``datasets`` and ``huggingface_hub`` in offline mode inside the block, if ``enabled``."""
    import datasets
    import huggingface_hub.constants as hub

    before = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    if enabled:
        datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = before


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence the progress bars and logged errors and retries of ``datasets`` and
    ``huggingface_hub``: failures are reported by us."""
    import datasets

    loggers = [logging.getLogger(name) for name in ("datasets", "huggingface_hub")]
    levels, bars_off = [lg.level for lg in loggers], datasets.are_progress_bars_disabled()
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if not bars_off:
            datasets.enable_progress_bars()
