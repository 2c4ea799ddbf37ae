"""Geometry of every block matrix: deadzone's analysis against WeightWatcher and an SVD loop.

A GPT-2-small-shaped model (``GPT2Config()``, random init, saved to a temporary directory), its
48 block matrices, one process:

1. ``deadzone`` analysis (one float64 Gram product per matrix,
   ``deadzone.geometry.analysis.analyze``),
   on the model in memory and streamed from the saved safetensors;
2. WeightWatcher ``analyze()`` with its defaults, restricted to the same 48 layers;
3. a plain loop of ``torch.linalg.svdvals`` (of ``W`` and of the row-centred ``W``)
   computing the same statistics, the amplitude PR written the plain way (a dense
   ``out x in x K`` tensor of responsibilities, then ``svdvals`` of the centred amplitudes):
   once in the stored float32, once in float64 (the precision the accuracy targets need).

Times are medians over ``--repeats`` runs, the contenders alternating, in wall-clock time on
all the machine's cores by default, each library with its own threading (deadzone measures one
matrix per core; WeightWatcher's and torch's SVDs use their BLAS threads): what a user waits
for. ``--clock cpu`` with one thread everywhere (``OMP_NUM_THREADS=1`` ...) compares the work
done on one core instead. Peak memory is the peak resident set size above the one at the start
of each run, sampled every 5 ms (the largest over the runs). Targets on a 2-core CPU: deadzone
<= 0.25x WeightWatcher and <= 0.5x the SVD loop.

Accuracy: deadzone and the SVD loop against a float64 ``numpy.linalg.svd`` reference on the
matrices of block 0.

Streaming: the model saved in shards of ``--shard-size``; a fresh process runs
``deadzone.geometry.analysis.analyze_checkpoint``
over every site and reports its peak resident memory
above the one before, against the largest shard (target <= 1.5x).

    python bench/analyze.py --repeats 5                 # everything, wall-clock, all cores
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        python bench/analyze.py --clock cpu               # the same work on one core
    python bench/analyze.py --repeats 1 --no-ww
    python bench/analyze.py --only-streaming --shard-size 200MB
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from transformers import GPT2Config, GPT2LMHeadModel

from deadzone.geometry import analysis, spectral
from deadzone.models.sites import Site, find_sites, select, site_matrix

Pairs = list[tuple[Site, torch.Tensor]]


# --- memory -----------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_parts() -> dict[str, int]:
    """Anonymous and file-backed (e.g. memory-mapped shards) resident bytes."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}


class PeakRSS:
    """Peak resident set size above the one at entry, sampled in a thread; also per part."""

    def __init__(self, every: float = 0.005) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self.parts = {"RssAnon": 0, "RssFile": 0}

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self.start)
            for k, v in rss_parts().items():
                self.parts[k] = max(self.parts[k], v - self.start_parts[k])
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self.start, self.start_parts = rss_bytes(), rss_parts()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() - self.start)


# --- contenders -------------------------------------------------------------------------------


def ours(pairs: Pairs) -> list[dict]:
    return analysis.analyze(iter(pairs), total=len(pairs), progress=False)


def plain_amplitudes(W: torch.Tensor, K: int = 8) -> torch.Tensor:
    """The definition written directly: ``(out, in) -> (out, K)``."""
    s = W.std(correction=0)
    centres = torch.linspace(-3.0, 3.0, K, dtype=W.dtype) * s
    width = 6.0 * s / (K - 1)
    log_pdf = -((W[:, :, None] - centres) ** 2) / (2 * width**2)  # (out, in, K)
    return torch.softmax(log_pdf, dim=-1).mean(dim=1)


def _pr(lam: torch.Tensor) -> float:
    return float(lam.sum() ** 2 / (lam**2).sum())


def _snr(sv: np.ndarray, shape: tuple[int, ...]) -> float:
    """Spectrum's SNR of singular values ``sv`` (its noise sum taken as 1 when empty)."""
    sigma = (np.quantile(sv, 0.75) - np.quantile(sv, 0.25)) / 1.349
    threshold = sigma * (1 + np.sqrt(min(shape) / max(shape)))
    noise = sv[sv <= threshold].sum() if (sv <= threshold).any() else 1.0
    return float(sv[sv > threshold].sum() / noise / sv.max())


def svd_loop(
    pairs: Pairs, dtype: torch.dtype | None = None, split: dict[str, float] | None = None
) -> list[dict]:
    """The same statistics from ``torch.linalg.svdvals`` of the matrices (cast to ``dtype``).

    ``split`` collects the time spent in SVDs and in amplitudes.
    """
    out = []
    for site, W in pairs:
        W = W if dtype is None else W.to(dtype)
        t0 = time.perf_counter()
        sigma = torch.linalg.svdvals(W).double()
        sigma_c = torch.linalg.svdvals(W - W.mean(dim=0)).double()
        t1 = time.perf_counter()
        A = plain_amplitudes(W)
        lam_a = torch.linalg.svdvals(A - A.mean(dim=0)).double() ** 2
        t2 = time.perf_counter()
        if split is not None:
            split["svd"] = split.get("svd", 0.0) + t1 - t0
            split["amplitude"] = split.get("amplitude", 0.0) + t2 - t1
        lam, lam_c = sigma**2, sigma_c**2
        kept = sigma[lam > max(W.shape) * spectral.EPS64 * lam.max()]
        p = kept / kept.sum()
        out.append(
            {
                "site": site.name,
                "pr": _pr(lam_c),
                "pc1": float(lam_c.max() / lam_c.sum()),
                "pr_uncentered": _pr(lam),
                "pc1_uncentered": float(lam.max() / lam.sum()),
                "stable_rank": float(lam.sum() / lam.max()),
                "effective_rank": float(torch.exp(-(p * p.log()).sum())),
                "spectral_norm": float(sigma.max()),
                "frobenius_norm": float(lam.sum().sqrt()),
                "amplitude_pr": _pr(lam_a),
                "snr": _snr(sigma.numpy(), tuple(W.shape)),
            }
        )
    return out


def deadzone_parts(pairs: Pairs) -> dict[str, float]:
    """Where deadzone's time goes, each stage over every matrix, on one thread (torch's and
    BLAS's), as each analysis worker runs it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    spent = dict.fromkeys(("gram", "spectra", "amplitudes"), 0.0)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            for _, W in pairs:
                t0 = time.perf_counter()
                g = spectral.grams(W[None])
                t1 = time.perf_counter()
                spectral._tridiagonal_spectra(g)  # sytrd, sterf and the centred top eigenvalue
                std = W.double().std(correction=0)[None]  # deadzone takes it from the Gram trace
                t2 = time.perf_counter()
                spectral.amplitudes(W[None], std=std)
                t3 = time.perf_counter()
                for k, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    spent[k] += dt
    finally:
        torch.set_num_threads(before)
    return {f"deadzone {k}": v for k, v in spent.items()}


def weightwatcher_run(model: torch.nn.Module, layer_ids: list[int]) -> Callable[[], object]:
    import logging

    import weightwatcher

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    watcher = weightwatcher.WeightWatcher(model=model)
    return lambda: watcher.analyze(layers=layer_ids)


def block_layer_ids(model: torch.nn.Module, pairs: Pairs) -> list[int]:
    """WeightWatcher's layer ids (positions in ``named_modules()``) of the block matrices."""
    wanted = {site.param_name.removesuffix(".weight") for site, _ in pairs}
    return [i for i, (name, _) in enumerate(model.named_modules()) if name in wanted]


# --- accuracy ---------------------------------------------------------------------------------


def reference(W: np.ndarray, K: int = 8) -> dict[str, float]:
    """Float64 SVD of the stored values, straight from the definitions."""
    sigma = np.linalg.svd(W, compute_uv=False)
    sigma_c = np.linalg.svd(W - W.mean(axis=0), compute_uv=False)
    lam, lam_c = sigma**2, sigma_c**2
    kept = sigma[lam > max(W.shape) * np.finfo(np.float64).eps * lam.max()]
    p = kept / kept.sum()
    A = plain_amplitudes(torch.from_numpy(W), K).numpy()
    lam_a = np.linalg.svd(A - A.mean(axis=0), compute_uv=False) ** 2
    return {
        "pr": lam_c.sum() ** 2 / (lam_c**2).sum(),
        "pc1": lam_c.max() / lam_c.sum(),
        "pr_uncentered": lam.sum() ** 2 / (lam**2).sum(),
        "pc1_uncentered": lam.max() / lam.sum(),
        "stable_rank": lam.sum() / lam.max(),
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "spectral_norm": sigma.max(),
        "frobenius_norm": np.sqrt(lam.sum()),
        "amplitude_pr": lam_a.sum() ** 2 / (lam_a**2).sum(),
        "snr": _snr(sigma, W.shape),
    }


def max_rel_error(got: list[dict], refs: list[dict]) -> dict[str, float]:
    return {
        m: max(abs(g[m] - r[m]) / abs(r[m]) for g, r in zip(got, refs, strict=True))
        for m in spectral.METRICS
    }


# --- streaming --------------------------------------------------------------------------------


def streaming_child(path: str) -> None:
    """Run in a fresh process: peak RSS of analysing every site of the checkpoint at ``path``."""
    with PeakRSS() as mem:
        records = analysis.analyze_checkpoint(path, progress=False)
    print(json.dumps({"peak": mem.peak, **mem.parts, "sites": len(records)}))


def streaming(model: torch.nn.Module, shard_size: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="deadzone-bench-") as tmp:
        model.save_pretrained(tmp, max_shard_size=shard_size)
        shards = sorted(Path(tmp).glob("*.safetensors"))
        largest = max(p.stat().st_size for p in shards)
        total = sum(p.stat().st_size for p in shards)
        done = subprocess.run(
            [sys.executable, __file__, "--streaming-child", tmp],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        child = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "shards": len(shards),
        "largest_shard_mb": largest / 2**20,
        "total_mb": total / 2**20,
        "peak_mb": child["peak"] / 2**20,
        "peak_anon_mb": child["RssAnon"] / 2**20,
        "peak_file_mb": child["RssFile"] / 2**20,
        "ratio": child["peak"] / largest,
        "sites": child["sites"],
    }


# --- main -------------------------------------------------------------------------------------


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def race(
    contenders: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]
) -> tuple[dict, dict, dict]:
    """Median seconds, peak MB and last result of each contender, the contenders alternating."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    results: dict[str, object] = {}
    for i in range(repeats):
        for name, fn in contenders.items():
            with PeakRSS() as mem:
                t0 = clock()
                results[name] = fn()
                seconds = clock() - t0
            runs[name].append((seconds, mem.peak / 2**20))
            print(
                f"  run {i + 1}: {name:18s} {seconds:7.2f} s  peak +{mem.peak / 2**20:6.0f} MB",
                flush=True,
            )
    times = {n: statistics.median(s for s, _ in r) for n, r in runs.items()}
    peaks = {n: max(p for _, p in r) for n, r in runs.items()}
    return times, peaks, results


def compare(model: torch.nn.Module, repeats: int, with_ww: bool, clock: str) -> dict:
    """Time, memory and accuracy of the contenders on the block matrices of ``model``."""
    chosen = select(find_sites(model), "L*")
    pairs = [(s, site_matrix(model, s)) for s in chosen]
    print(f"{len(pairs)} block matrices, {sum(s.params for s in chosen) / 1e6:.1f}M weights")
    with tempfile.TemporaryDirectory(prefix="deadzone-bench-") as tmp:
        model.save_pretrained(tmp)
        contenders: dict[str, Callable[[], object]] = {
            "deadzone": lambda: ours(pairs),
            "deadzone streamed": lambda: analysis.analyze_checkpoint(tmp, "L*", progress=False),
            "svdvals loop": lambda: svd_loop(pairs),
            "svdvals loop f64": lambda: svd_loop(pairs, torch.float64),
        }
        if with_ww:
            contenders["weightwatcher"] = weightwatcher_run(model, block_layer_ids(model, pairs))
        times, peaks, results = race(contenders, repeats, CLOCKS[clock])
    parts: dict[str, float] = {}
    svd_loop(pairs, split=parts)
    parts |= deadzone_parts(pairs)

    print(f"\nmedian {clock} time, peak memory above start:")
    for name in contenders:
        print(f"  {name:18s} {times[name]:7.2f} s  +{peaks[name]:6.0f} MB")
    ratios = {
        "vs svdvals loop": times["deadzone"] / times["svdvals loop"],
        "vs svdvals loop f64": times["deadzone"] / times["svdvals loop f64"],
    }
    if "weightwatcher" in times:
        ratios["vs weightwatcher"] = times["deadzone"] / times["weightwatcher"]
    for name, r in ratios.items():
        print(f"  deadzone {name}: {r:.3f}x")
    print(
        f"  parts (one run): svdvals loop {parts['svd']:.2f} s in SVDs + "
        f"{parts['amplitude']:.2f} s in amplitudes; deadzone (one thread) "
        + ", ".join(
            f"{k.removeprefix('deadzone ')} {v:.2f} s"
            for k, v in parts.items()
            if k.startswith("deadzone")
        )
    )

    block0 = {s.name: W for s, W in pairs if s.layer == 0}
    refs = [reference(W.double().numpy()) for W in block0.values()]
    accuracy = {
        name: max_rel_error([r for r in results[name] if r["site"] in block0], refs)
        for name in ("deadzone", "svdvals loop", "svdvals loop f64")
    }
    print("\nmax relative error vs float64 numpy SVD (block 0):")
    for name, errs in accuracy.items():
        print(f"  {name:18s} " + "  ".join(f"{m} {e:.1e}" for m, e in errs.items()))
    return {"seconds": times, "peak_mb": peaks, "ratios": ratios, "parts": parts,
            "accuracy": accuracy, "repeats": repeats}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender")
    parser.add_argument("--no-ww", action="store_true", help="skip WeightWatcher")
    parser.add_argument("--shard-size", default="200MB", help="max_shard_size for streaming")
    parser.add_argument("--only-streaming", action="store_true", help="only the streaming part")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: wall-clock time; cpu: process CPU time (meant for one thread everywhere)",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--streaming-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.streaming_child:
        streaming_child(args.streaming_child)
        return

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    print(f"GPT-2 small shape, random init; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")  # fmt: skip
    figures: dict = {
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "clock": args.clock,
    }
    if not args.only_streaming:
        figures |= compare(model, args.repeats, with_ww=not args.no_ww, clock=args.clock)
    stream = streaming(model, args.shard_size)
    print(
        f"\nstreaming {stream['sites']} sites from {stream['shards']} shards "
        f"({stream['total_mb']:.0f} MB, largest {stream['largest_shard_mb']:.0f} MB): "
        f"peak +{stream['peak_mb']:.0f} MB = {stream['ratio']:.2f}x the largest shard "
        f"(peaks: anonymous +{stream['peak_anon_mb']:.0f} MB, "
        f"file-backed +{stream['peak_file_mb']:.0f} MB)"
    )
    figures["streaming"] = stream
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
