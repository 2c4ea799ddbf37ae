"""One self-contained HTML page: a small document model and its renderer.

A :class:`Page` has a title, the study's claims with their verdicts on this model, and
sections of headings, paragraphs, tables (plain data) and PNG images. Rendering embeds
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
class Image:
    """A PNG file, embedded when the page is rendered."""

    path: Path
    alt: str


@dataclass
class Section:
    """A heading and its blocks; a section inside a section is one heading level down."""

    title: str
    blocks: list[Paragraph | Table | Image | Section] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """One of the study's claims, what the study measured, and its verdict on this model."""

    claim: str
    study: str
    verdict: str
    numbers: str

    def __post_init__(self) -> None:
        if self.verdict not in CLAIM_VERDICTS:
            raise ValueError(f"claim verdict {self.verdict!r} is not one of {CLAIM_VERDICTS}")


@dataclass
class Page:
    title: str
    claims: list[Claim] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    intro: str | None = None


STYLE = """
*{box-sizing:border-box}
body{margin:0 auto;max-width:64rem;padding:1rem;font:16px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif;color:#1b1b1b;background:#fff;overflow-wrap:anywhere}
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.3rem;margin-top:2rem;
border-bottom:1px solid #ddd}h3{font-size:1.1rem}
code{font:.9em ui-monospace,Menlo,Consolas,monospace;background:#f3f3f3;padding:0 .2em}
.scroll{overflow-x:auto;margin:1rem 0}
table{border-collapse:collapse;font-size:.9rem}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:normal}
th{background:#f6f6f6}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
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


def _section(section: Section, level: int) -> str:
    parts = [f"<section>\n<h{level}>{_text(section.title)}</h{level}>"]
    for block in section.blocks:
        if isinstance(block, Paragraph):
            parts.append(f"<p>{_text(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Image):
            parts.append(_image(block))
        elif isinstance(block, Section):
            parts.append(_section(block, min(level + 1, 6)))
        else:
            raise TypeError(f"not a block of a section: {block!r}")
    parts.append("</section>")
    return "\n".join(parts)


def claims_table(claims: list[Claim]) -> Table:
    return Table(
        ["Claim", "The study", "On this model", "The numbers"],
        [[c.claim, c.study, Cell(c.verdict, c.verdict), c.numbers] for c in claims],
    )


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
    parts.append('<section id="claims">\n<h2>The study\'s claims on this model</h2>')
    if page.claims:
        parts.append(_table(claims_table(page.claims), cards=True))
    else:
        parts.append("<p>No experiment here tests one of the study's claims.</p>")
    parts.append("</section>")
    parts += [_section(s, 2) for s in page.sections]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write(page: Page, path: str | Path) -> Path:
    """Render ``page`` to ``path`` atomically."""
    fileio.write_text(path, render(page))
    return Path(path)
