"""``report.md`` and the page of a plan search, from the ``summary`` of its ``results.json`` alone.

The summary (plain data; costs are shares of each seed's fine-tuning gain, 0.01 = 1%, or nats
when the gain was not clearly positive: ``scale.unit``)::

    {"scale": {"unit": "share_of_gain", "margin_used": 0.02, "gains": {"0": 0.27, ...}},
     "steps": [{"phase": "prefix", "depth": 4, "sites": [], "seeds": 2, "verdict": "costly",
                "cost": 0.26, "interval": [0.17, 0.35], "seeds_needed": null,
                "action": "rejected"}, ...],
     "prefix_depths": [{"depth": 4, "seeds": 2, "verdict": "costly", "cost": 0.26,
                        "interval": [0.17, 0.35]}, ...],
     "plan": {"prefix_depth": 1, "sites": ["L3.mlp.c_fc"], "empty": false, "seeds": 3,
              "verdict": "negligible", "cost": 0.004, "interval": [-0.01, 0.015],
              "unit": "share_of_gain", "margin": 0.02, "steps": 50},
     "savings": {"flops_ratio": 0.81, "frozen_share": 0.3, "ceilings": {...},
                 "cached_flops_ratio": 0.7, "state_bytes_saved": ..., ...},
     "step_time": {"ratio": 0.86, "n": 3, "interval": [0.8, 0.93]} | null,
     "long_horizon": {"horizon": 4, "steps": 200, "seeds": 3, "verdict": "negligible",
                      "cost": ..., "interval": [...], "holds": true, "step_time": {...}} | null,
     "runs": 15, "runs_long": 6}

``step_time`` is the plan's time per token over ``full``'s, a geometric mean over paired seeds
with its 95% interval made on the log scale. Nothing here recomputes a statistic.
"""

from __future__ import annotations

from pathlib import Path

from deadzone.errors import DeadzoneError
from deadzone.report import html, write_files
from deadzone.report.crystallize import _in_unit, _interval
from deadzone.report.table import Table, to_markdown, to_text

MIB = 2**20


def _unit(summary: dict) -> str:
    return summary["scale"]["unit"]


def _cost(judged: dict, unit: str) -> str:
    """``+1.23% [-0.40%, +2.86%]``: a judged cost with its 95% interval, in ``unit``."""
    if judged.get("cost") is None:
        return "— (a run failed)"
    return f"{_in_unit(judged['cost'], unit)} {_interval(judged.get('interval'), unit)}"


def _unit_words(unit: str) -> str:
    return "of the fine-tuning gain" if unit == "share_of_gain" else "nats"


def _in_words(unit: str) -> str:
    return "as a share of each seed's fine-tuning gain" if unit == "share_of_gain" else "in nats"


def margin_text(summary: dict) -> str:
    """The margin the costs were judged against, in their unit: ``2% of the fine-tuning gain``."""
    margin, unit = summary["scale"]["margin_used"], _unit(summary)
    shown = f"{100 * margin:g}%" if unit == "share_of_gain" else f"{margin:g}"
    return f"{shown} {_unit_words(unit)}"


def _times(step_time: dict | None) -> str:
    """``0.862× [0.804, 0.931] (3 seeds)``: a measured ratio to full with its log-scale interval."""
    if not step_time:
        return "—"
    low_high = step_time.get("interval")
    shown = f"{step_time['ratio']:#.3g}×"  # three digits: a wide interval keeps its bounds
    shown += f" [{low_high[0]:#.3g}, {low_high[1]:#.3g}]" if low_high else " (no interval)"
    return f"{shown} ({step_time['n']} {'seed' if step_time['n'] == 1 else 'seeds'})"


def frozen_words(depth: int, sites: list[str]) -> str:
    """What a candidate freezes, in words: ``the embeddings and blocks 0-2, and 3 sites above``."""
    said = []
    if depth:
        said.append("the embeddings and " + ("block 0" if depth == 1 else f"blocks 0-{depth - 1}"))
    if sites:
        above = " above" if depth else ""
        said.append(f"{len(sites)} {'matrix' if len(sites) == 1 else 'matrices'}{above}")
    return ", and ".join(said) or "nothing"


def _judged(steps: list[dict]) -> list[dict]:
    """The looks that decided (those that only asked for more seeds are left out)."""
    return [s for s in steps if s["action"] != "more_seeds"]


def depths_table(summary: dict) -> Table:
    """Each prefix depth the bisection judged, in the order judged."""
    unit = _unit(summary)
    rows = [
        [str(d["depth"]), frozen_words(d["depth"], []), str(d["seeds"]), d["verdict"],
         _cost(d, unit)]
        for d in summary["prefix_depths"]
    ]  # fmt: skip
    columns = ["Prefix depth", "Frozen", "Seeds", "Verdict", "Cost, 95% interval"]
    return Table(columns, rows, right=frozenset({0, 2, 4}))


def growth_table(summary: dict) -> Table:
    """Each joint check of the prefix grown by sites above it."""
    unit = _unit(summary)
    rows = [
        [frozen_words(s["depth"], s["sites"]), str(s["seeds"]), s["verdict"], _cost(s, unit),
         s["action"]]
        for s in _judged(summary["steps"])
        if s["phase"] == "grow"
    ]  # fmt: skip
    columns = ["Frozen", "Seeds", "Verdict", "Cost, 95% interval", "Taken"]
    return Table(columns, rows, right=frozenset({1, 3}))


def savings_table(summary: dict) -> Table:
    """The savings model of the certified plan per step beside what its runs measured."""
    saving, long = summary["savings"], summary["long_horizon"]
    rows = [["Time per step × full", f"{saving['flops_ratio']:.3f} (FLOPs)",
             _times(summary["step_time"])]]  # fmt: skip
    if long:
        rows.append([f"… at {long['steps']} steps", "—", _times(long.get("step_time"))])
    if "cached_flops_ratio" in saving:
        rows.append(["… with cached prefix outputs", f"{saving['cached_flops_ratio']:.3f}", "—"])
    ceilings = saving["ceilings"]
    rows += [
        ["Frozen share of the matmul FLOPs (φ)", f"{saving['frozen_share']:.3f}", "—"],
        ["Best ratio at φ: scattered / prefix / cached",
         f"{ceilings['scattered']:.3f} / {ceilings['prefix']:.3f} / {ceilings['cached']:.3f}",
         "—"],
        ["Optimizer state and gradients saved", f"{saving['state_bytes_saved'] / MIB:,.1f} MiB",
         "—"],
        ["Activations saved", f"{saving['activation_bytes_saved'] / MIB:,.1f} MiB", "—"],
    ]  # fmt: skip
    return Table(["Per step", "Modelled", "Measured (time per token)"], rows, right=frozenset())


def plan_text(summary: dict) -> str:
    """The certified plan in a sentence, with its joint interval and seeds."""
    plan = summary["plan"]
    if plan["empty"]:
        return (
            "No frozen set was shown negligible: the certified plan is the empty one (it freezes "
            "nothing)."
        )
    return (
        f"Certified plan: {frozen_words(plan['prefix_depth'], plan['sites'])}; joint cost "
        f"{_cost(plan, plan['unit'])} {_unit_words(plan['unit'])}, {plan['verdict']} on "
        f"{plan['seeds']} seeds at {plan['steps']} steps."
    )


def long_text(summary: dict) -> str | None:
    """The long-horizon check in a sentence; None when none ran."""
    long, plan = summary["long_horizon"], summary["plan"]
    if not long:
        return None
    word = "still negligible" if long["holds"] else f"no longer negligible ({long['verdict']})"
    return (
        f"At {long['steps']} steps ({long['horizon']}× the search's) on {long['seeds']} seeds the "
        f"plan costs {_cost(long, long['unit'])} {_unit_words(long['unit'])} (against "
        f"{_cost(plan, plan['unit'])} at {plan['steps']} steps): {word}."
    )


def context_text(results: dict) -> str:
    s, long = results["summary"], results["summary"]["long_horizon"]
    if long:
        checked = f"the plan checked again at {long['horizon']}× the steps"
    elif s["plan"]["empty"]:
        checked = "no longer check (the plan is empty)"
    else:
        checked = "no longer check (`--horizon 1`)"
    return (
        f"Searched with data `{results['data']['spec']}`: {results['steps']} SFT steps, up to "
        f"{len(results['seeds'])} seeds, {results['grow']} look(s) growing the prefix, "
        f"{checked}; {s['runs']} runs at the search's steps, {s['runs_long']} longer."
    )


def statistics_text(summary: dict) -> str:
    return (
        "A cost is the mean over seeds of the paired difference in final eval loss against "
        f"`full` on the same batches, {_in_words(_unit(summary))}, with its 95% t interval; "
        f"negligible when the whole interval lies below the margin, {margin_text(summary)}. "
        "Each look is judged at the 95% level, on few seeds first and more while undetermined; "
        "the looks of one search are not adjusted for each other. The bisection takes a deeper "
        "prefix to cost at least as much as a shallower one."
    )


def next_steps(results: dict) -> list[str]:
    """What to do next, in plain sentences: first that the plan fails at the long horizon, if
    it does; then the certified plan's files and the commands that apply it, or, when nothing
    was certified, what could decide."""
    s, model, spec = results["summary"], results["model"], results["data"]["spec"]
    plan, long = s["plan"], s["long_horizon"]
    said = []
    if long and not long["holds"]:
        said.append(
            f"Do not use this plan for runs of {long['steps']} steps: there it costs "
            f"{_cost(long, long['unit'])} {_unit_words(long['unit'])}, {long['verdict']}, no "
            f"longer negligible. Search again at the length you train for: `deadzone plan "
            f"{model} --data {spec} --steps {long['steps']} --out DIR2`."
        )
    if plan["empty"]:
        return said + _nothing_certified(results)
    fails = long is not None and not long["holds"]
    head = f"For runs of about {plan['steps']} steps only, freeze" if fails else "Freeze"
    said.append(
        f"{head} the certified plan, {frozen_words(plan['prefix_depth'], plan['sites'])}: "
        f"joint cost {_cost(plan, plan['unit'])} {_unit_words(plan['unit'])}, "
        f"{plan['verdict']} on {plan['seeds']} seeds at {plan['steps']} steps; modelled step "
        f"FLOPs {s['savings']['flops_ratio']:.2f}× full's, measured time per token "
        f"{_times(s['step_time'])} full's."
    )
    said.append(
        'Apply it as it is: `deadzone.plans.apply_plan(model, "DIR/plan.json")`, '
        "`unfrozen_parameters` from `DIR/axolotl.yaml` in axolotl, `DIR/lora_config.json` in "
        "peft (it adapts only what the plan keeps trainable), `DIR/frozen_parameters.txt` "
        "anywhere else."
    )
    said.append(
        f"Run it beside full SFT and the random control: `deadzone freeze {model} --schedule "
        f"plan:DIR/plan.json,random --data {spec} --out DIR2` (it freezes the plan from step 1, "
        "then more up to `--target-fraction`); in your trainer, "
        '`FreezeCallback("plan:DIR/plan.json")`.'
    )
    if long is None:
        said.append(
            f"It was judged at {plan['steps']} steps only: before a longer run, rerun with "
            "`--horizon 4` into the same directory to check it at 4× the steps."
        )
    elif long["holds"]:
        said.append(f"It was checked up to {long['steps']} steps; longer runs were not.")
    return said


def _nothing_certified(results: dict) -> list[str]:
    """What to try when the certified plan is the empty one."""
    s, model, spec = results["summary"], results["model"], results["data"]["spec"]
    said = [
        f"Keep full SFT for now: no frozen set was shown negligible at the margin {margin_text(s)}."
    ]
    needed = [
        j["seeds_needed"]
        for j in _judged(s["steps"])
        if j["verdict"] == "undetermined" and j.get("seeds_needed")
    ]
    if needed:
        said.append(
            f"{len(needed)} look(s) stayed undetermined; about {min(needed)} seeds would decide "
            f"the closest: rerun with `--seeds {min(needed)}` into the same directory (finished "
            "runs are reused)."
        )
    said.append(
        f"If a larger cost is acceptable to you, rerun with a larger `--margin` (now "
        f"{margin_text(s)}): the costs below say what each prefix depth would take."
    )
    said.append(
        f"Look for single matrices that carry nothing wherever they sit: `deadzone scan {model} "
        f"--data {spec} --out DIR2`."
    )
    return said


def markdown(results: dict) -> str:
    """``report.md`` of a plan search, from its results alone."""
    s = results["summary"]
    lines = [f"# Plan of `{results['model']}`", "", "## What to do next", ""]
    lines += [*(f"- {step}" for step in next_steps(results)), ""]
    lines += [context_text(results), "", statistics_text(s), ""]
    lines += ["## Certified plan", "", plan_text(s), ""]
    if s["plan"]["sites"]:
        lines += ["Sites frozen above the prefix: " + ", ".join(f"`{n}`" for n in
                  s["plan"]["sites"]) + ".", ""]  # fmt: skip
    lines += ["## Prefix depths", "", to_markdown(depths_table(s)), ""]
    growth = growth_table(s)
    if growth.rows:
        lines += ["## Growth above the prefix", "", to_markdown(growth), ""]
    if not s["plan"]["empty"]:
        lines += ["## Savings", "", to_markdown(savings_table(s)), "", savings_words(s), ""]
    if said := long_text(s):
        lines += ["## Long horizon", "", said, ""]
    return "\n".join(lines)


def savings_words(summary: dict) -> str:
    saving = summary["savings"]
    return (
        f"Modelled per step at batch {saving['batch_size']} × {saving['seq_len']} tokens "
        "(the mean training length); measured: the plan's time per token over full's in its "
        "runs, a geometric mean over paired seeds with its 95% interval on the log scale."
    )


def summary_text(results: dict) -> str:
    """What ``deadzone plan`` prints: the prefix depths, the plan, its savings and the long
    horizon."""
    s = results["summary"]
    lines = [f"Costs {_in_words(_unit(s))}; margin {margin_text(s)}."]
    lines += [to_text(depths_table(s)), plan_text(s)]
    lines += [] if s["plan"]["empty"] else [
        f"Savings model: step FLOPs {s['savings']['flops_ratio']:.3f}× full's (frozen share "
        f"{s['savings']['frozen_share']:.3f}); measured time per token {_times(s['step_time'])}."
    ]  # fmt: skip
    lines += [said] if (said := long_text(s)) else []
    lines.append(f"Runs: {s['runs']} at the search's steps, {s['runs_long']} longer.")
    return "\n".join(lines) + "\n"


def _finished(directory: str | Path, results: dict) -> None:
    if results.get("summary") is None:
        raise DeadzoneError(
            f"{Path(directory) / 'results.json'}: the plan search has not finished; rerun the "
            "same command to continue it"
        )


def write_report(directory: str | Path) -> Path:
    """Write ``report.md`` in ``directory`` from its ``results.json``; return its path. A search
    that has not finished is a one-line DeadzoneError."""
    from deadzone.report import read_results

    _finished(directory, read_results(directory, "plan"))
    return write_files(directory, "plan", markdown, {})[0]


def html_report(directory: Path, results: dict, study: bool = False) -> html.Report:
    """Rewrite ``report.md``; return the plan's sections, as in ``report.md``."""
    write_report(directory)
    s = results["summary"]
    title = f"Plan of `{results['model']}`"
    blocks: list = [html.Paragraph(context_text(results)), html.Paragraph(statistics_text(s)),
                    html.Paragraph(plan_text(s))]  # fmt: skip
    if s["plan"]["sites"]:
        blocks.append(html.Items([f"`{n}`" for n in s["plan"]["sites"]]))
    blocks.append(html.Section("Prefix depths", [html.from_table(depths_table(s))]))
    growth = growth_table(s)
    if growth.rows:
        blocks.append(html.Section("Growth above the prefix", [html.from_table(growth)]))
    if not s["plan"]["empty"]:
        saving = [html.from_table(savings_table(s)), html.Paragraph(savings_words(s))]
        blocks.append(html.Section("Savings", saving))
    if said := long_text(s):
        blocks.append(html.Section("Long horizon", [html.Paragraph(said)]))
    blocks += html.provenance(results)
    return html.Report(title, results["model"], results["data"]["spec"], next_steps(results),
                       [html.Section(title, blocks)])  # fmt: skip
