"""ONNX Runtime on CPU: inputs at their exact shapes vs padded to the TensorRT length buckets, interleaved.

    .venv/bin/python scripts/bench_buckets.py MODELS --graph av --calls 30 --rounds 3 --threads 2

Two workloads of one clip per call: "files" (lengths drawn uniformly from 0.5-30 s, seeded) and "live"
(4.8-5.0-s windows, as a live source's 5-s windows arrive). Each case has its own session, so ONNX
Runtime's arena sees only that case's shapes. Prints the median and total ms per call of each case and
the padded/exact ratio, then the RSS growth (kept after the calls, and peak) of each case run alone in
a fresh process after its first call (the allocation churn: what ONNX Runtime's arena takes for the
shapes it sees).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from avemo.machine import describe
from avemo.runtime.backends import write_padded
from avemo.runtime.backends.engines import bucket_profiles, pick_profile
from avemo.runtime.backends.ort import OrtBackend
from avemo.runtime.backends.parity import case_inputs
from avemo.runtime.models.manifest import Manifest, load_manifest

WORKLOADS = {"files": (0.5, 30.0), "live": (4.8, 5.0)}


def _calls(manifest: Manifest, graph: str, workload: str, calls: int, padded: bool) -> Iterator[dict[str, np.ndarray]]:
    f, (lo, hi) = manifest.features, WORKLOADS[workload]
    seconds = np.random.default_rng(0).uniform(lo, hi, calls)
    limits = bucket_profiles(manifest, graph)
    for i, s in enumerate(seconds):
        inputs = case_inputs(f, graph, [max(8, round(s * f.frames_per_second))], [max(1, round(s * f.fps))], i)
        if padded:
            _, shapes = pick_profile(limits, {k: v.shape for k, v in inputs.items()})
            buffers = {k: np.empty(shapes[k], v.dtype) for k, v in inputs.items()}
            for name, array in inputs.items():
                write_padded(buffers[name], array)
            inputs = buffers
        yield inputs


def _rss_mb() -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def _child(args: argparse.Namespace) -> None:
    """One case alone, its inputs made one call at a time: how much RSS (now and peak) its calls added after
    the session's first call (what ONNX Runtime's arena kept or took for the shapes it saw)."""
    manifest = load_manifest(args.models)
    calls = _calls(manifest, args.graph, args.workload, args.calls, args.case == "padded")
    backend = OrtBackend(manifest.graph_path(args.graph), args.threads)
    backend.infer(next(calls))
    before = _rss_mb()
    for inputs in calls:
        backend.infer(inputs)
    del inputs
    after = _rss_mb()
    print(json.dumps({k: after[k] - before[k] for k in after}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("--graph", default="av")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", choices=("exact", "padded"), help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return _child(args)
    manifest = load_manifest(args.models)
    print(f"Machine: {describe()}\n")
    print("| workload | case | median ms/call | total ms | shapes | padded/exact (total) | RSS kept MB | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for workload in WORKLOADS:
        cases = {
            c: list(_calls(manifest, args.graph, workload, args.calls, c == "padded")) for c in ("exact", "padded")
        }
        sessions = {c: OrtBackend(manifest.graph_path(args.graph), args.threads) for c in cases}
        for case, calls in cases.items():  # warm-up: the first call of a session is not timed
            sessions[case].infer(calls[0])
        times: dict[str, list[float]] = {c: [] for c in cases}
        for _ in range(args.rounds):
            for i in range(args.calls):  # interleaved call by call, so drift hits both alike
                for case, calls in cases.items():
                    start = time.perf_counter()
                    sessions[case].infer(calls[i])
                    times[case].append(1000 * (time.perf_counter() - start))
        base = sum(times["exact"])
        for case, values in times.items():
            child = [sys.executable, __file__, str(args.models), "--graph", args.graph, "--calls", str(args.calls)]
            child += ["--threads", str(args.threads), "--case", case, "--workload", workload]
            rss = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
            shapes = len({tuple(v.shape for v in c.values()) for c in cases[case]})
            print(
                f"| {workload} | {case} | {statistics.median(values):.1f} | {sum(values):.0f} | {shapes} | "
                f"{sum(values) / base:.2f}x | {rss['VmRSS']:+.0f} | {rss['VmHWM']:+.0f} |"
            )


if __name__ == "__main__":
    main()
