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
    calls: dict[str, Callable[[], object]],
    iters: int,
    warmup: int = 3,
    rounds: int = 3,
    duration: float | None = None,
) -> dict[str, np.ndarray]:
    """Milliseconds per call for each candidate: ``rounds`` x ``iters`` samples each.

    Every round runs each candidate's ``iters`` calls in turn (the order rotates
    per round), so slow spells of a shared machine hit all candidates alike.
    With ``duration`` (seconds per candidate, as trtexec's ``--duration``) a
    candidate's turn also ends once it has used its share of that time
    (``iters`` is then a cap), and so does its warm-up; a candidate whose calls
    are slower than its turns skips later rounds once ``duration`` is spent,
    so a case takes about ``duration`` plus two calls per candidate.
    """
    if iters < 1 or rounds < 1:
        raise ValueError("iters and rounds must be >= 1")
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    turn_ns = None if duration is None else duration / rounds * 1e9
    for name in names:
        started = time.perf_counter_ns()
        for _ in range(warmup):
            calls[name]()
            if turn_ns is not None and time.perf_counter_ns() - started >= turn_ns:
                break
    spent = dict.fromkeys(names, 0)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if turn_ns is not None and samples[name] and spent[name] >= turn_ns * rounds:
                continue  # its time is used up by slow calls: fewer rounds, not more time
            call, turn_started = calls[name], spent[name]
            for _ in range(iters):
                t0 = time.perf_counter_ns()
                call()
                took = time.perf_counter_ns() - t0
                samples[name].append(took / 1e6)
                spent[name] += took
                if turn_ns is not None and spent[name] - turn_started >= turn_ns:
                    break
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
