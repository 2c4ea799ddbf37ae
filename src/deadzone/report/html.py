"""One self-contained HTML page: a small document model and its renderer.

A :class:`Page` has a title, a table of contents, a plain summary of what to do next, the study's
claims with their verdicts when asked for, and sections of headings, paragraphs, lists, tables
(plain data) and PNG images. Every heading is unique and carries an anchor. Rendering embeds
everything (styles in a ``<style>`` element, images as base64 data URIs): the file opens
from disk with no network, no scripts and no external requests. All text is escaped; text
in backticks is set as code. The same page renders to the same bytes.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from deadzone import fileio
from deadzone.errors import DeadzoneError
from deadzone.report import table

CLAIM_VERDICTS = ("confirmed", "refuted", "undetermined")
_CLASS = re.compile(r"[a-z][a-z0-9-]*")
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Cell:
    """A table cell: its text and an optional CSS class (``confirmed``, ``worse``, ``num``…)."""

    text: str
    cls: str | None = None

    def __post_init__(self) -> None:
        if self.cls is not None and not _CLASS.fullmatch(self.cls):
            raise ValueError(f"not a CSS class name: {self.cls!r}")


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str | Cell]]
    caption: str | None = None

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.headers):
                raise ValueError(f"a row has {len(row)} cells for {len(self.headers)} headers")


VERDICTS = ("baseline", "better", "negligible", "costly", "undetermined")


def from_table(model: table.Table) -> Table:
    """A table model (the one the terminal and Markdown render) as an HTML table: its
    right-aligned columns as numbers, a cell that opens with a verdict word coloured by it."""
    rows = []
    for row in model.rows:
        cells: list[str | Cell] = []
        for i, text in enumerate(row):
            word = text.split(" ", 1)[0]
            cls = word if word in VERDICTS else "num" if i in model.right else None
            cells.append(Cell(text, cls))
        rows.append(cells)
    return Table(list(model.columns), rows)


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Items:
    """A numbered (``ordered``) or bulleted list of sentences."""

    items: list[str]
    ordered: bool = False


@dataclass(frozen=True)
class Image:
    """A PNG file, embedded when the page is rendered."""

    path: Path
    alt: str


@dataclass
class Section:
    """A heading and its blocks; a section inside a section is one heading level down."""

    title: str
    blocks: list[Paragraph | Items | Table | Image | Section] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """One of the study's claims, what the study measured, and its verdict on the experiment
    ``where`` names (its model and data; empty when the page has one experiment)."""

    claim: str
    study: str
    verdict: str
    numbers: str
    where: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in CLAIM_VERDICTS:
            raise ValueError(f"claim verdict {self.verdict!r} is not one of {CLAIM_VERDICTS}")


@dataclass
class Page:
    """``summary``: what to do next, one sentence an item; ``study``: the page shows the study's
    claims (``claims``), as the demo and ``deadzone report --study`` do."""

    title: str
    claims: list[Claim] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    intro: str | None = None
    summary: list[Section] = field(default_factory=list)
    study: bool = False


STYLE = """
*{box-sizing:border-box}
body{margin:0 auto;max-width:84rem;padding:1rem;font:16px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif;color:#1b1b1b;background:#fff;overflow-wrap:anywhere}
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.3rem;margin-top:2rem;
border-bottom:1px solid #ddd}h3{font-size:1.1rem}
code{font:.9em ui-monospace,Menlo,Consolas,monospace;background:#f3f3f3;padding:0 .2em}
.scroll{overflow-x:auto;margin:1rem 0}
table{border-collapse:collapse;font-size:.8rem}
nav ol{margin:.3rem 0;padding-left:1.4rem}nav li{margin:.1rem 0}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:normal}
th{background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.confirmed,.better,.negligible{background:#e3f4e1;color:#17611b;font-weight:600}
.refuted,.costly{background:#fbe4e2;color:#8c1d13;font-weight:600}
.undetermined{background:#fdf3d8;color:#6b4f00;font-weight:600}
.baseline{color:#555}
img{max-width:100%;height:auto;display:block;margin:1rem 0}
@media (max-width:40rem){table.cards,table.cards tbody,table.cards tr,table.cards td{display:block}
table.cards thead{display:none}table.cards tr{margin-bottom:.8rem;border:1px solid #ddd}
table.cards td{border:0;border-top:1px solid #eee}
table.cards td::before{content:attr(data-label);display:block;font-size:.8rem;color:#555}}
"""


@dataclass
class Report:
    """What one experiment puts on a page: its title, model and data (empty: the experiment
    read no data), what to do next, the study's claims it judges (when asked for) and its
    sections."""

    title: str
    model: str
    data: str
    next_steps: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)


def figures(directory: Path, shown: tuple[tuple[str, str], ...]) -> list[Image]:
    """The ``(file name, alt text)`` figures that ``directory`` holds, as images."""
    return [Image(directory / name, alt) for name, alt in shown if (directory / name).is_file()]


def provenance(results: dict) -> list[Paragraph]:
    """What wrote the results (versions, git revision) as a paragraph; none when unrecorded."""
    versions = results.get("versions", {})
    said = [f"{name} {versions[name]}" for name in sorted(versions)]
    git = results.get("git") or {}
    if git.get("revision"):
        said.append(f"git {git['revision'][:12]}" + (" (dirty)" if git.get("dirty") else ""))
    return [Paragraph("Written by " + ", ".join(said) + ".")] if said else []


def _text(text: str) -> str:
    """Escaped text, with spans in backticks set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _cell(tag: str, cell: str | Cell, label: str | None = None) -> str:
    if isinstance(cell, str):
        cell = Cell(cell)
    cls = f' class="{cell.cls}"' if cell.cls else ""
    data = f' data-label="{html.escape(label)}"' if label is not None else ""
    return f"<{tag}{cls}{data}>{_text(cell.text)}</{tag}>"


def _table(table: Table, cards: bool = False) -> str:
    """A table in its own horizontal scroller; ``cards``: on a phone, one card per row, each
    cell under its header."""
    attr = ' class="cards"' if cards else ""
    labels = table.headers if cards else [None] * len(table.headers)
    lines = [f'<div class="scroll"><table{attr}>']
    if table.caption:
        lines.append(f"<caption>{_text(table.caption)}</caption>")
    lines.append("<thead><tr>" + "".join(_cell("th", h) for h in table.headers) + "</tr></thead>")
    lines.append("<tbody>")
    lines += [
        "<tr>" + "".join(_cell("td", c, h) for c, h in zip(row, labels, strict=True)) + "</tr>"
        for row in table.rows
    ]
    lines.append("</tbody></table></div>")
    return "\n".join(lines)


def _image(image: Image) -> str:
    """The PNG as a data URI, with its intrinsic size so the layout does not jump."""
    try:
        data = Path(image.path).read_bytes()
    except OSError as e:
        raise DeadzoneError(f"cannot read image {image.path}: {e.strerror}") from None
    if data[:8] != _PNG or data[12:16] != b"IHDR":
        raise DeadzoneError(f"{image.path} is not a PNG file")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    alt = html.escape(image.alt)
    return f'<img src="{uri}" alt="{alt}" width="{width}" height="{height}">'


def _section(section: Section, level: int, ids: dict[int, str]) -> str:
    anchor = ids[id(section)]
    parts = [f'<section id="{anchor}">\n<h{level}>{_text(section.title)}</h{level}>']
    for block in section.blocks:
        if isinstance(block, Paragraph):
            parts.append(f"<p>{_text(block.text)}</p>")
        elif isinstance(block, Items):
            tag = "ol" if block.ordered else "ul"
            items = "".join(f"<li>{_text(item)}</li>" for item in block.items)
            parts.append(f"<{tag}>{items}</{tag}>")
        elif isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Image):
            parts.append(_image(block))
        elif isinstance(block, Section):
            parts.append(_section(block, min(level + 1, 6), ids))
        else:
            raise TypeError(f"not a block of a section: {block!r}")
    parts.append("</section>")
    return "\n".join(parts)


def claims_table(claims: list[Claim]) -> Table:
    """The claims, with the experiment each was judged on when the page holds several."""
    if not any(c.where for c in claims):
        return Table(
            ["Claim", "The study", "On this model", "The numbers"],
            [[c.claim, c.study, Cell(c.verdict, c.verdict), c.numbers] for c in claims],
        )
    return Table(
        ["Claim", "The study", "Judged on", "Verdict", "The numbers"],
        [[c.claim, c.study, c.where, Cell(c.verdict, c.verdict), c.numbers] for c in claims],
    )


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _anchors(sections: list[Section], taken: set[str]) -> dict[int, str]:
    """A unique anchor for every section, nested ones included, in page order."""
    ids: dict[int, str] = {}
    stack = list(reversed(sections))
    while stack:
        section = stack.pop()
        base = anchor = _slug(section.title)
        n = 1
        while anchor in taken:
            n += 1
            anchor = f"{base}-{n}"
        taken.add(anchor)
        ids[id(section)] = anchor
        stack += reversed([b for b in section.blocks if isinstance(b, Section)])
    return ids


def unique_titles(sections: list[Section], seen: dict[str, int] | None = None) -> list[Section]:
    """``sections`` (nested ones too) with a repeated title numbered (``Scan of m``, ``Scan of m
    (2)``), so that no two headings of a page read the same."""
    seen = {} if seen is None else seen
    out = []
    for section in sections:
        seen[section.title] = n = seen.get(section.title, 0) + 1
        blocks = [
            unique_titles([b], seen)[0] if isinstance(b, Section) else b for b in section.blocks
        ]
        out.append(Section(section.title if n == 1 else f"{section.title} ({n})", blocks))
    return out


def _contents(top: list[tuple[str, str]]) -> str:
    items = "".join(f'<li><a href="#{anchor}">{_text(title)}</a></li>' for anchor, title in top)
    return f'<nav id="contents" aria-label="Contents"><h2>Contents</h2><ol>{items}</ol></nav>'


def render(page: Page) -> str:
    """The page as one HTML document."""
    title = _text(page.title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request
        f"<title>{html.escape(page.title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{title}</h1>",
    ]
    if page.intro:
        parts.append(f"<p>{_text(page.intro)}</p>")
    sections = unique_titles(page.summary + page.sections)
    ids = _anchors(sections, {"contents", "claims"})
    top = [(ids[id(s)], s.title) for s in sections[: len(page.summary)]]
    claims_title = "The study's claims" + ("" if any(c.where for c in page.claims) else " here")
    top += [("claims", claims_title)] if page.study else []
    top += [(ids[id(s)], s.title) for s in sections[len(page.summary) :]]
    parts.append(_contents(top))
    parts += [_section(s, 2, ids) for s in sections[: len(page.summary)]]
    if page.study:
        parts.append(f'<section id="claims">\n<h2>{_text(claims_title)}</h2>')
        if page.claims:
            parts.append(_table(claims_table(page.claims), cards=True))
        else:
            parts.append("<p>No experiment here tests one of the study's claims.</p>")
        parts.append("</section>")
    parts += [_section(s, 2, ids) for s in sections[len(page.summary) :]]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write(page: Page, path: str | Path) -> Path:
    """Render ``page`` to ``path`` atomically."""
    fileio.write_text(path, render(page))
    return Path(path)
