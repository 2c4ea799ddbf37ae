"""One table model, rendered to Markdown and to plain text for the terminal (and to HTML later)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    """Column headers and rows of already formatted cells; ``right`` lists the columns that are
    right-aligned (numbers)."""

    columns: list[str]
    rows: list[list[str]]
    right: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"row {row!r} has {len(row)} cells for {len(self.columns)}")


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table."""
    rule = ["---:" if i in table.right else "---" for i in range(len(table.columns))]
    lines = [table.columns, rule, *table.rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def to_text(table: Table) -> str:
    """Columns padded to their widest cell, two spaces apart, a rule under the header."""
    lines = [table.columns, *table.rows]
    widths = [max(len(cells[i]) for cells in lines) for i in range(len(table.columns))]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if i in table.right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(table.columns), rule, *(line(r) for r in table.rows)])
