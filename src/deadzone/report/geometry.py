"""Reports of ``deadzone analyze``, built from geometry records alone
(see ``deadzone.geometry.analysis``).

A terminal table like the study's, a short summary, and the records as JSON, CSV and a plot.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from deadzone import fileio
from deadzone.geometry.spectral import METRICS
from deadzone.models.sites import ASSUMED
from deadzone.report import pyplot, save_png

# Column title and format of each metric shown in the terminal table.
COLUMNS: dict[str, tuple[str, Callable[[float], str]]] = {
    "pr": ("PR", "{:.1f}".format),
    "pc1": ("PC1 %", lambda v: f"{100 * v:.1f}"),
    "stable_rank": ("stable rank", "{:.1f}".format),
    "effective_rank": ("eff. rank", "{:.1f}".format),
    "amplitude_pr": ("amp. PR", "{:.2f}".format),
}
NOT_COMPUTABLE = "n/a"
UNDEFINED = "—"


def _cell(record: dict, metric: str) -> str:
    if not record["finite"]:
        return NOT_COMPUTABLE
    value = record[metric]
    return UNDEFINED if value is None else COLUMNS[metric][1](value)


def table(records: list[dict]) -> Table:
    """Site, shape, params, PR, PC1 %, stable rank, effective rank, amplitude PR per site."""
    t = Table(title="Geometry of each matrix (out x in)", title_justify="left")
    if any(r.get("orientation") == ASSUMED for r in records):
        t.caption = (
            "orientation assumed: no config model_type and no tensor name tells the layout, so "
            "stored matrices were read as out x in (nn.Linear); a GPT-2 style Conv1D would be "
            "the transpose"
        )
        t.caption_justify = "left"
    t.add_column("site", no_wrap=True)
    t.add_column("shape", justify="right", no_wrap=True)
    t.add_column("params", justify="right", no_wrap=True)
    for title, _ in COLUMNS.values():
        t.add_column(title, justify="right")
    for r in records:
        t.add_row(
            r["site"],
            f"{r['shape'][0]}x{r['shape'][1]}",
            f"{r['params']:,}",
            *(_cell(r, metric) for metric in COLUMNS),
            style=None if r["finite"] else "red",
        )
    return t


def summary_text(summary: dict) -> str:
    """The summary of ``deadzone.geometry.analysis.summarize`` in a few sentences."""
    lines = [f"{summary['sites']} matrices analysed."]
    if summary["mean_pr_by_role"]:
        roles = ", ".join(f"{role} {pr:.1f}" for role, pr in summary["mean_pr_by_role"].items())
        lines.append(f"Mean PR by role: {roles}.")
    cmp = summary["attn_out_vs_in"]
    if cmp is not None:
        ratio = "" if cmp["ratio"] is None else f" ({cmp['ratio']:.2f}x)"
        lines.append(
            f"Attention output projections (c_proj/o_proj type) have mean PR "
            f"{cmp['attn_out_mean_pr']:.1f} against {cmp['attn_in_mean_pr']:.1f} for the input "
            f"projections (c_attn/q,k,v type){ratio}; lower in {cmp['layers_out_lower']} of "
            f"{cmp['layers']} layers."
        )
    top = summary["highest_pc1"]
    if top is not None:
        lines.append(
            f"Highest PC1: {top['site']}, {top['pc1']:.1%} of the variance on the first "
            "principal component."
        )
    bad = summary["not_computable"]
    if bad:
        lines.append(
            f"Not computable (NaN or Inf in the matrix): {len(bad)} site(s): {', '.join(bad)}."
        )
    return "\n".join(lines)


CSV_FIELDS = ("site", "layer", "role", "out", "in", "params", "finite", *METRICS, "orientation")


def csv_text(records: list[dict]) -> str:
    """One row per site; ``shape`` becomes ``out`` and ``in``; undefined metrics are empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {k: v for k, v in r.items() if k in CSV_FIELDS}
        writer.writerow({**row, "out": r["shape"][0], "in": r["shape"][1]})
    return buf.getvalue()


def write_csv(path: str | Path, records: list[dict]) -> None:
    fileio.write_text(path, csv_text(records))


def write_json(path: str | Path, records: list[dict]) -> None:
    fileio.write_json(path, records)


def write_plot(path: str | Path, records: list[dict]) -> None:
    """PNG: PR and PC1 % against layer, one line per role (block matrices only)."""
    plt = pyplot()

    by_role: dict[str, list[dict]] = {}
    for r in records:
        if r["layer"] is not None and r["finite"]:
            by_role.setdefault(r["role"], []).append(r)
    fig, (ax_pr, ax_pc1) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    for role, rows in sorted(by_role.items()):
        rows.sort(key=lambda r: r["layer"])
        for ax, metric, scale in ((ax_pr, "pr", 1.0), (ax_pc1, "pc1", 100.0)):
            points = [(r["layer"], r[metric] * scale) for r in rows if r[metric] is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=role)
    ax_pr.set(xlabel="layer", ylabel="participation ratio (row-centred)", title="PR per layer")
    ax_pc1.set(xlabel="layer", ylabel="PC1 share of variance (%)", title="PC1 % per layer")
    for ax in (ax_pr, ax_pc1):
        ax.grid(alpha=0.3)
        if by_role:
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            ax.text(0.5, 0.5, "no block matrices analysed", ha="center", transform=ax.transAxes)
    if by_role:  # one legend under both panels, on no line
        handles, labels = ax_pr.get_legend_handles_labels()
        fig.legend(handles, labels, fontsize="small", loc="outside lower center", ncols=6)
    save_png(fig, path)
