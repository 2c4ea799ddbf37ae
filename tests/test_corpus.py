"""The builtin corpus: deterministic, big enough, and split by package with no overlap."""

from __future__ import annotations

import re

import pytest

from deadzone.data import corpus
from deadzone.data.corpus import (
    Document,
    build_corpus,
    clean_docstring,
    corpus_hash,
    corpus_info,
    docstring_pairs,
    docstring_pairs_of,
    documents,
    pretraining_documents,
    split_of,
    stdlib_sources,
)
from deadzone.errors import DeadzoneError


def _group(module: str) -> str:
    """The unit the split is drawn over: a top-level package, or one documentation topic."""
    return module if ":" in module else module.split(".")[0]


def test_built_twice_gives_the_same_corpus_and_hash():
    first = build_corpus()
    build_corpus.cache_clear()
    second = build_corpus()
    assert second is not first
    assert second.hash == first.hash
    assert second == first  # same documents and pairs, in the same order


def test_the_cached_pairs_give_the_parsed_corpus_and_a_bad_cache_is_parsed_again(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    build_corpus.cache_clear()
    parsed = build_corpus()  # nothing cached: parsed, then written
    (path,) = (tmp_path / "deadzone" / "corpus").glob("pairs-*.json")
    build_corpus.cache_clear()
    assert build_corpus() == parsed  # read back from the cache
    path.write_text('{"hash": "x", "pairs": [["only", "two"]]}')
    build_corpus.cache_clear()
    assert build_corpus() == parsed  # unreadable rows: parsed again
    build_corpus.cache_clear()


def test_hash_is_a_full_sha256_and_follows_the_content():
    assert re.fullmatch(r"[0-9a-f]{64}", corpus_hash())
    built = build_corpus()
    docs, pairs = list(built.documents), list(built.pairs)
    assert corpus._content_hash(docs, pairs) == built.hash
    changed = Document(docs[0].module, docs[0].split, docs[0].text + " ")
    assert corpus._content_hash([changed, *docs[1:]], pairs) != built.hash
    moved = Document(docs[0].module, "eval" if docs[0].split == "train" else "train", docs[0].text)
    assert corpus._content_hash([moved, *docs[1:]], pairs) != built.hash


def test_pretraining_text_is_large_but_bounded():
    total = sum(len(t.encode("utf-8")) for s in ("train", "eval") for t in pretraining_documents(s))
    assert 3_000_000 <= total <= 10_000_000
    assert all(t.strip() for s in ("train", "eval") for t in pretraining_documents(s))
    modules = {d.module for s in ("train", "eval") for d in documents(s)}
    assert {"json.decoder", "collections", "pydoc_data.topics:assignment"} <= modules


def test_documents_are_sorted_unique_and_tagged():
    for split in ("train", "eval"):
        docs = documents(split)
        assert docs, split
        names = [d.module for d in docs]
        assert names == sorted(names)
        assert len(set(names)) == len(names)
        assert all(d.split == split == split_of(d.module) for d in docs)
        assert [d.text for d in docs] == pretraining_documents(split)


def test_train_and_eval_share_no_module_or_package():
    doc_groups = {s: {_group(d.module) for d in documents(s)} for s in ("train", "eval")}
    pair_groups = {s: {_group(r["module"]) for r in docstring_pairs(s)} for s in ("train", "eval")}
    assert not doc_groups["train"] & doc_groups["eval"]
    assert not pair_groups["train"] & pair_groups["eval"]
    # pairs are held out with the documents they come from
    assert pair_groups["eval"] <= doc_groups["eval"]
    assert pair_groups["train"] <= doc_groups["train"]


def test_enough_clean_docstring_pairs():
    train, held_out = docstring_pairs("train"), docstring_pairs("eval")
    assert len(train) + len(held_out) >= 2000
    assert len(held_out) >= 100
    rows = train + held_out
    for row in rows:
        assert set(row) == {"prompt", "completion", "module"}
        assert row["prompt"].strip() and row["completion"].strip() and row["module"]
        assert row["completion"] == row["completion"].strip()
        assert len(row["completion"]) <= corpus.MAX_COMPLETION_CHARS
        assert f"`{row['module']}`" in row["prompt"]
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert len({r["completion"] for r in rows}) == len(rows)


def test_returned_rows_are_copies():
    rows = docstring_pairs("train")
    rows[0]["completion"] = "changed"
    rows.clear()
    assert docstring_pairs("train")[0]["completion"] != "changed"


def test_unknown_split_is_a_one_line_error():
    for call in (pretraining_documents, docstring_pairs, documents):
        with pytest.raises(DeadzoneError, match="unknown corpus split 'test'") as err:
            call("test")
        assert "\n" not in str(err.value)


def test_info_matches_the_data():
    info = corpus_info()
    assert info["hash"] == corpus_hash()
    for split in ("train", "eval"):
        assert info["documents"][split] == len(pretraining_documents(split))
        assert info["pairs"][split] == len(docstring_pairs(split))
        assert info["bytes"][split] == sum(len(t.encode()) for t in pretraining_documents(split))
        assert info["modules"][split] == len({d.module for d in documents(split)})
    assert 0.02 < info["bytes"]["eval"] / sum(info["bytes"].values()) < 0.15


def test_split_goes_by_top_level_package():
    assert split_of("email.parser") == split_of("email") == split_of("email.mime.text")
    assert {split_of(f"pkg{i}") for i in range(200)} == {"train", "eval"}


def test_source_selection_rules(tmp_path):
    (tmp_path / "alpha.py").write_text("A = 1\r\n")
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("'''pkg'''\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("X = 2\n")
    (tmp_path / "pkg" / "sub" / "mod.py").write_text("Y = 3\n")
    (tmp_path / "pkg" / "tests").mkdir()
    (tmp_path / "pkg" / "tests" / "__init__.py").write_text("T = 1\n")
    (tmp_path / "site-packages" / "other").mkdir(parents=True)  # not a package itself
    (tmp_path / "site-packages" / "other" / "__init__.py").write_text("O = 1\n")
    (tmp_path / "tkinter").mkdir()
    (tmp_path / "tkinter" / "__init__.py").write_text("K = 1\n")
    (tmp_path / "_sysconfigdata__linux.py").write_text("build_time_vars = {}\n")
    (tmp_path / "empty.py").write_text("\n")
    found = stdlib_sources(tmp_path)
    assert found == [
        ("alpha", "A = 1\n"),
        ("pkg", "'''pkg'''\n"),
        ("pkg.sub", "X = 2\n"),
        ("pkg.sub.mod", "Y = 3\n"),
    ]


SOURCE = '''
def public(a, b=2, *args, key: int = 0) -> int:
    """Add the numbers given and return the total of them."""


def _private(a):
    """This private helper should never become a pair."""


def short():
    """Too short."""


class Widget(Base, metaclass=Meta):
    """A widget that can be drawn on a canvas."""

    def __init__(self, size):
        """Create a widget of the given size in pixels."""

    @property
    def area(self):
        """The area the widget covers, in square pixels."""

    def _hidden(self):
        """Private methods are skipped like private functions."""
'''


def test_pairs_of_a_module():
    pairs = docstring_pairs_of("shapes", SOURCE)
    codes = [p.prompt.split("\n\n", 1)[1] for p in pairs]
    assert codes == [
        "def public(a, b=2, *args, key: int=0) -> int:\n",
        "class Widget(Base, metaclass=Meta):\n",
        "class Widget(Base, metaclass=Meta):\n    def __init__(self, size):\n",
        "class Widget(Base, metaclass=Meta):\n    @property\n    def area(self):\n",
    ]
    assert pairs[0].prompt.startswith("Write the docstring for this function from the Python")
    assert pairs[2].prompt.startswith("Write the docstring for this method")
    assert [p.completion for p in pairs] == [
        "Add the numbers given and return the total of them.",
        "A widget that can be drawn on a canvas.",
        "Create a widget of the given size in pixels.",
        "The area the widget covers, in square pixels.",
    ]
    assert docstring_pairs_of("broken", "def f(:\n") == []


def test_clean_docstring_keeps_whole_paragraphs():
    first = "Summary line that says what the function does."
    long_paragraph = "word " * 200
    assert clean_docstring(f"{first}\n\n{long_paragraph}") == first
    assert clean_docstring(f"  {first}\n\n\n  Second one.  ") == f"{first}\n\nSecond one."
    assert clean_docstring(long_paragraph) is None
    assert clean_docstring("Too short.") is None
    assert clean_docstring("") is None
