"""Latency sampling on a noisy machine: candidates interleaved round by round, raw samples kept.

Torch-free; used by `avemo profile` and by `avemo calibrate`'s CPU int8 decision.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np

PERCENTILES = (50, 90, 99)


def interleaved_latency(
    calls: dict[str, Callable[[], object]], iters: int, warmup: int = 3, rounds: int = 3
) -> dict[str, np.ndarray]:
    """Milliseconds per call for each candidate: ``rounds`` x ``iters`` samples each.

    Every round runs each candidate's ``iters`` calls in turn (the order rotates
    per round), so slow spells of a shared machine hit all candidates alike.
    """
    if iters < 1 or rounds < 1:
        raise ValueError("iters and rounds must be >= 1")
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        for _ in range(warmup):
            calls[name]()
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            call = calls[name]
            for _ in range(iters):
                t0 = time.perf_counter_ns()
                call()
                samples[name].append((time.perf_counter_ns() - t0) / 1e6)
    return {name: np.asarray(values) for name, values in samples.items()}


def summarize(samples_ms: np.ndarray) -> dict[str, float]:
    """p50/p90/p99 (linear interpolation, as numpy), max, mean and the spread of per-round medians."""
    values = np.asarray(samples_ms, np.float64)
    if values.size == 0:
        raise ValueError("no latency samples")
    out = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    out.update(max=float(values.max()), min=float(values.min()), mean=float(values.mean()), n=int(values.size))
    return out


@contextlib.contextmanager
def stage(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    """Add the block's wall time (ms) to ``timings[name]``; does nothing when ``timings`` is None."""
    if timings is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + 1000 * (time.perf_counter() - t0)
