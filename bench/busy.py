"""Pretraining on a busy machine: torch's default thread count against ``choose_threads``.

A short pretraining of a builtin preset (``--preset tiny --steps 40`` by default) runs in a
fresh process, on an idle machine and beside two CPU-bound processes, once with the threads
``choose_threads`` picks (the usable cores other work leaves idle) and once with torch's
default (one per usable core). Printed: the training throughput (tokens/s, from the pretraining
record) of each, and each setting's slowdown busy / idle (target: at most 2.5x with the chosen
threads; an even share of the cores would give 2x on two cores).

Run it on a machine with nothing else running, or pinned to cores nothing else uses
(``taskset -c 0,1 python bench/busy.py``: the affinity mask is what counts as usable, and the two
CPU-bound processes inherit it).

    python bench/busy.py
    python bench/busy.py --preset micro --steps 20   # seconds, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

SPIN = "while True: pass"


def child(preset: str, steps: int, threads: str, out: str) -> dict:
    """One pretraining in this (fresh) process; its throughput and the threads it used."""
    import logging

    from deadzone.models import presets
    from deadzone.models.device import usable_cores
    from deadzone.models.pretraining import pretrain

    name = f"{preset}-bench"
    presets.PRESETS[name] = replace(presets.get_preset(preset), name=name, steps=steps)
    os.environ.pop("OMP_NUM_THREADS", None)
    chosen = usable_cores() if threads == "default" else None
    said = []  # choose_threads' line: "torch threads: N (why)"
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("deadzone.models.device")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    done = pretrain(name, out, threads=chosen)
    return {"tokens_per_second": done.record["tokens_per_second"], "threads": said[0]}


def measure(args, threads: str, busy: bool, out: str) -> dict:
    hogs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2 if busy else 0)]
    try:
        time.sleep(1.0 if busy else 0.0)  # the hogs are running before the choice is made
        command = [sys.executable, __file__, "--preset", args.preset, "--steps", str(args.steps)]
        result = subprocess.run(
            [*command, "--child", threads, out], check=True, capture_output=True, text=True
        )
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--child", nargs=2, metavar=("THREADS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.preset, args.steps, *args.child)))
        return
    import tempfile

    from deadzone.models.device import usable_cores

    print(f"{args.preset}, {args.steps} steps, {usable_cores()} usable cores")
    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for threads in ("auto", "default"):
            for busy in (False, True):
                out = os.path.join(tmp, f"{threads}-{busy}")
                r = measure(args, threads, busy, out)
                rates[threads, busy] = r["tokens_per_second"]
                where = "beside 2 CPU-bound" if busy else "idle"
                print(f"{threads:8s} {where:18s} {r['threads']:55s} "
                      f"{r['tokens_per_second']:8.0f} tok/s", flush=True)  # fmt: skip
        for threads in ("auto", "default"):
            ratio = rates[threads, False] / rates[threads, True]
            print(f"{threads:8s} busy / idle time: {ratio:.2f}x")
        print(f"busy: default / auto time: {rates['auto', True] / rates['default', True]:.2f}x")


if __name__ == "__main__":
    main()
