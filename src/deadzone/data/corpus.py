"""The builtin corpus: text every Python installation carries, built deterministically.

Two parts, both drawn from the running interpreter's standard library:

* **pretraining documents** — the source of every importable standard-library module (one
  document per ``.py`` file) and the reference-manual topics of ``pydoc_data.topics`` (one
  document per topic), in order of module name;
* **``builtin:docstrings``** — prompt → completion pairs read with :mod:`ast`: the prompt
  shows the signature of a public (or special, like ``__init__``) function, method or class
  and asks for its docstring; the completion is that docstring, cleaned by
  :func:`inspect.cleandoc` and cut to whole paragraphs.

Both are split into train and eval by **top-level package**: a hash of the package name sends
``EVAL_PERCENT`` % of packages (about 5 % of the text) to eval, by the same rule for documents
and pairs. Held-out loss is thus measured on packages the model never saw, and the eval pairs
come from source that is not among the train documents.

The whole corpus is identified by :func:`corpus_hash`, a sha256 over a canonical JSON
serialisation of every document, pair and split assignment. It is built once per process
(a few seconds) and kept in memory.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import platform
import sysconfig
import tokenize
from dataclasses import astuple, dataclass
from pathlib import Path

from deadzone import fileio
from deadzone.errors import DeadzoneError
from deadzone.fileio import cache_root

SPLITS = ("train", "eval")
# Share of top-level packages held out (they hold about 5 % of the text; see docs/corpus.md).
EVAL_PERCENT = 10
SPLIT_SALT = "deadzone-corpus-split-v1"
FORMAT_VERSION = 1

# Directories skipped wherever they occur: test suites and installed third-party packages.
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})
# Top-level packages and modules left out, and why:
SKIPPED_TOP_LEVEL = frozenset(
    {
        # Shipped separately (or not at all) by many distributions, so leaving them out keeps
        # the corpus, and its hash, the same across builds of one Python version.
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "lib2to3",
        "distutils",
        "ensurepip",
        "msilib",
        # Generated or machine-specific files that are not prose or idiomatic code.
        "encodings",  # mostly generated character-mapping tables
        "this",  # the Zen of Python, ROT13-encoded
        "sitecustomize",
        "usercustomize",
        # A pure-Python duplicate of the C `_decimal` (230 KB); `decimal` itself is kept.
        "_pydecimal",
        # Read through its `topics` dict instead, one document per topic.
        "pydoc_data",
    }
)
SKIPPED_PREFIXES = ("_sysconfigdata",)  # build paths and compiler flags of this machine
TOPICS_MODULE = "pydoc_data.topics"

# Docstring pairs: completions are whole paragraphs, at most this long; shorter or
# wordless docstrings and very long signatures are skipped.
MAX_COMPLETION_CHARS = 600
MIN_COMPLETION_CHARS = 24
MIN_COMPLETION_WORDS = 4
MAX_SIGNATURE_CHARS = 240
PROMPT_TEMPLATE = (
    "Write the docstring for this {kind} from the Python module `{module}`.\n\n{code}\n"
)


@dataclass(frozen=True)
class Document:
    """One pretraining document: a module's source or a documentation topic."""

    module: str  # dotted module name, or ``pydoc_data.topics:<topic>``
    split: str
    text: str


@dataclass(frozen=True)
class Pair:
    """One ``builtin:docstrings`` row."""

    module: str
    split: str
    prompt: str
    completion: str

    def as_row(self) -> dict:
        return {"prompt": self.prompt, "completion": self.completion, "module": self.module}


@dataclass(frozen=True)
class Corpus:
    """Everything the corpus holds, in canonical order, and its content hash."""

    documents: tuple[Document, ...]
    pairs: tuple[Pair, ...]
    hash: str


# --------------------------------------------------------------------------- public API


def documents(split: str) -> list[Document]:
    """The pretraining documents of ``split``, each tagged with its module, in module order."""
    split = _check_split(split)
    return [d for d in build_corpus().documents if d.split == split]


def pretraining_documents(split: str) -> list[str]:
    """The texts of :func:`documents` (``split`` is ``"train"`` or ``"eval"``)."""
    return [d.text for d in documents(split)]


def docstring_pairs(split: str) -> list[dict]:
    """``builtin:docstrings`` rows ``{"prompt", "completion", "module"}`` of ``split``."""
    split = _check_split(split)
    return [p.as_row() for p in build_corpus().pairs if p.split == split]


def corpus_hash() -> str:
    """Hex sha256 of the whole corpus: documents, pairs and their split."""
    return build_corpus().hash


def corpus_info() -> dict:
    """Sizes and identity of the corpus, as written into results files and docs."""
    corpus = build_corpus()
    info: dict = {"hash": corpus.hash, "python": platform.python_version()}
    info["documents"] = {s: sum(d.split == s for d in corpus.documents) for s in SPLITS}
    info["bytes"] = {
        s: sum(len(d.text.encode("utf-8")) for d in corpus.documents if d.split == s)
        for s in SPLITS
    }
    info["pairs"] = {s: sum(p.split == s for p in corpus.pairs) for s in SPLITS}
    info["modules"] = {s: len({d.module for d in corpus.documents if d.split == s}) for s in SPLITS}
    return info


@functools.cache
def build_corpus() -> Corpus:
    """Read the standard library of the running interpreter into a :class:`Corpus`.

    Parsing every module for its docstring pairs takes most of the time (seconds); the pairs
    and the corpus hash are kept in the user cache under a key that hashes this module's own
    source and every document read, so an edit to either parses again."""
    sources = stdlib_sources(Path(sysconfig.get_paths()["stdlib"]))
    docs = [Document(m, split_of(m), text) for m, text in sources]
    docs += [Document(m, split_of(m), text) for m, text in documentation_topics()]
    docs.sort(key=lambda d: d.module)
    path = cache_root() / "corpus" / f"pairs-{_inputs_hash(docs)}.json"
    try:
        cached = fileio.read_json(path)
        return Corpus(tuple(docs), tuple(Pair(*row) for row in cached["pairs"]), cached["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet, or unreadable: parse
    pairs = _dedupe([pair for m, text in sources for pair in docstring_pairs_of(m, text)])
    corpus = Corpus(tuple(docs), tuple(pairs), _content_hash(docs, pairs))
    rows = [astuple(p) for p in pairs]  # read back by Pair(*row)
    with contextlib.suppress(OSError, DeadzoneError):  # a read-only cache: parse next time
        fileio.write_json(path, {"hash": corpus.hash, "pairs": rows})
    return corpus


def _inputs_hash(docs: list[Document]) -> str:
    """sha256 of what the pairs are made from: this module's source and every document."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for d in docs:
        h.update(f"\0{d.module}\0{d.split}\0".encode())
        h.update(d.text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# --------------------------------------------------------------------------- splitting


def split_of(module: str) -> str:
    """``"eval"`` for about ``EVAL_PERCENT`` % of top-level packages, else ``"train"``.

    Source modules are grouped by top-level package (``email.parser`` goes with ``email``);
    each documentation topic is its own group.
    """
    group = module if module.startswith(TOPICS_MODULE + ":") else module.split(".")[0]
    digest = hashlib.sha256(f"{SPLIT_SALT}:{group}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % 100 < EVAL_PERCENT else "train"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DeadzoneError(f"unknown corpus split {split!r}; expected 'train' or 'eval'")
    return split


# --------------------------------------------------------------------------- reading


def stdlib_sources(root: Path) -> list[tuple[str, str]]:
    """``(module, source)`` for each importable ``.py`` file under ``root``, by module name.

    Only directories that are packages (hold an ``__init__.py``) are entered, which leaves out
    ``site-packages``, ``lib-dynload`` and ``config-*``. Line endings are normalised to ``\\n``;
    a file that cannot be decoded is skipped.
    """
    found: list[tuple[str, str]] = []
    for path in _python_files(root):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts)
        if parts[0] in SKIPPED_TOP_LEVEL or parts[0].startswith(SKIPPED_PREFIXES):
            continue
        try:
            with tokenize.open(path) as f:  # honours coding declarations and BOMs
                text = f.read()
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if text.strip():
            found.append((module, text))
    found.sort()
    return found


def _python_files(directory: Path) -> list[Path]:
    files: list[Path] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file() and entry.name.endswith(".py"):
                files.append(Path(entry.path))
            elif (
                entry.is_dir(follow_symlinks=False)
                and entry.name not in SKIPPED_DIRS
                and os.path.isfile(os.path.join(entry.path, "__init__.py"))
            ):
                files.extend(_python_files(Path(entry.path)))
    return files


def documentation_topics() -> list[tuple[str, str]]:
    """``(pydoc_data.topics:<topic>, text)`` for each reference-manual topic, by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions ship the documentation separately
        return []
    return [
        (f"{TOPICS_MODULE}:{name}", text.replace("\r\n", "\n"))
        for name, text in sorted(topics.items())
        if text.strip()
    ]


# --------------------------------------------------------------------------- docstring pairs


def docstring_pairs_of(module: str, source: str) -> list[Pair]:
    """Pairs for the public module-level functions and classes of one module, and the public
    methods of those classes, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    split = split_of(module)
    pairs: list[Pair] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _public(node.name):
            pairs += _pair(module, split, "function", node, _signature(node))
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            header = _signature(node)
            pairs += _pair(module, split, "class", node, header)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _public(item.name):
                    code = header + "\n" + _indent(_signature(item))
                    pairs += _pair(module, split, "method", item, code)
    return pairs


def _public(name: str) -> bool:
    """Not private: no leading underscore, except special methods such as ``__init__``."""
    return not name.startswith("_") or (len(name) > 4 and name[:2] == name[-2:] == "__")


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    """The node's decorators and ``def``/``class`` line, without its body."""
    lines = [f"@{ast.unparse(d)}" for d in node.decorator_list]
    if isinstance(node, ast.ClassDef):
        bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
        lines.append(f"class {node.name}({', '.join(bases)}):" if bases else f"class {node.name}:")
    else:
        keyword = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
        lines.append(f"{keyword} {node.name}({ast.unparse(node.args)}){returns}:")
    return "\n".join(lines)


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.splitlines())


def _pair(
    module: str,
    split: str,
    kind: str,
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef,
    code: str,
) -> list[Pair]:
    completion = clean_docstring(ast.get_docstring(node, clean=True) or "")
    if completion is None or len(code) > MAX_SIGNATURE_CHARS:
        return []
    prompt = PROMPT_TEMPLATE.format(kind=kind, module=module, code=code)
    return [Pair(module, split, prompt, completion)]


def clean_docstring(doc: str) -> str | None:
    """Leading whole paragraphs of a cleaned docstring, at most ``MAX_COMPLETION_CHARS`` long.

    ``None`` when the docstring is too short to teach anything, or its first paragraph alone
    is over the limit.
    """
    paragraphs = [p.strip() for p in doc.strip().split("\n\n") if p.strip()]
    kept: list[str] = []
    for paragraph in paragraphs:
        if len("\n\n".join([*kept, paragraph])) > MAX_COMPLETION_CHARS:
            break
        kept.append(paragraph)
    text = "\n\n".join(kept)
    if len(text) < MIN_COMPLETION_CHARS or len(text.split()) < MIN_COMPLETION_WORDS:
        return None
    return text


def _dedupe(pairs: list[Pair]) -> list[Pair]:
    """Keep the first pair (in module order) of each prompt and of each completion, so no
    text is both a train and an eval target."""
    seen_prompts: set[str] = set()
    seen_completions: set[str] = set()
    kept: list[Pair] = []
    for pair in pairs:
        if pair.prompt in seen_prompts or pair.completion in seen_completions:
            continue
        seen_prompts.add(pair.prompt)
        seen_completions.add(pair.completion)
        kept.append(pair)
    return kept


# --------------------------------------------------------------------------- identity


def _content_hash(docs: list[Document], pairs: list[Pair]) -> str:
    """sha256 of a canonical JSON serialisation of the corpus (independent of file paths)."""
    canonical = {
        "format": FORMAT_VERSION,
        "documents": [[d.module, d.split, d.text] for d in docs],
        "pairs": [[p.module, p.split, p.prompt, p.completion] for p in pairs],
    }
    blob = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
