"""Latency cases: backends x precisions x graphs x batch x clip length, timed interleaved.

Candidates that share a shape are timed interleaved (``timing``), so a slow spell on a shared machine hits
them alike; raw samples are kept. Torch-free: the PyTorch eager baseline (``backend="torch"``) is a
``Baseline`` handed in by the command layer that may import torch (`avemo profile`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from avemo.contract import AUDIO_FEATS, AUDIO_LENGTHS, FACE_LENGTHS, FACES, PROFILE_BACKENDS
from avemo.errors import AvemoError
from avemo.machine import machine_info
from avemo.runtime.backends import Backend, open_backend
from avemo.runtime.backends.parity import sample_inputs
from avemo.runtime.models.manifest import Manifest, load_manifest
from avemo.runtime.timing import interleaved_latency, summarize

#: MLPerf Inference's minimum query count for a single-stream run; `--iters` may lower it.
MLPERF_MIN_QUERIES = 1024


FORMAT = "avemo-profile"


#: The PyTorch eager baseline: (checkpoint, graph, threads) -> a backend. A top-level callable, so that a
#: fresh process (``memory.peak_rss``) can be handed it too.
Baseline = Callable[[Path, str, "int | None"], Backend]
Combo = tuple[str, str]  # (backend, precision)


def profile_inputs(manifest: Manifest, graph: str, batch: int, seconds: float) -> dict[str, np.ndarray]:
    """Seeded inputs where every clip of the batch is ``seconds`` long (no padding: worst case per batch), faces
    in the graph's own dtype (ONNX Runtime's profiler and FLOP count feed its session directly)."""
    inputs = sample_inputs(manifest.features, graph, batch, seconds, 0, manifest.faces_dtype)
    for lengths, padded in ((AUDIO_LENGTHS, AUDIO_FEATS), (FACE_LENGTHS, FACES)):
        if lengths in inputs:
            inputs[lengths][:] = inputs[padded].shape[1]
    return inputs


def unavailable(
    manifest: Manifest, backend: str, precision: str, checkpoint: Path | None, baseline: Baseline | None = None
) -> str | None:
    """Why (backend, precision) cannot be profiled here, or None."""
    if backend not in PROFILE_BACKENDS:
        return f"unknown backend {backend!r}"
    if backend == "torch":
        if precision != "fp32":
            return "the PyTorch baseline is fp32 eager"
        if baseline is None:
            return "no PyTorch baseline handed in (`avemo profile` brings it where avemo[train] is installed)"
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'avemo[train]')"
        if checkpoint is None or not Path(checkpoint).is_file():
            return f"checkpoint {checkpoint} not found (pass --checkpoint)"
        return None
    if precision not in manifest.precisions:
        return f"no {precision} graphs in {manifest.root}"
    if backend == "trt":
        return _trt_unavailable(manifest, precision)
    return None


def _trt_unavailable(manifest: Manifest, precision: str) -> str | None:
    if precision == "int8-cpu":
        return "int8-cpu is ONNX Runtime's CPU graph"
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        return "tensorrt and pycuda are not importable (a GPU device with avemo[trt])"
    from avemo.runtime.backends.engines import engine_path
    from avemo.runtime.backends.trt import current_device

    try:
        device = current_device()
    except AvemoError as exc:
        return f"no usable GPU ({exc})"
    if not all(engine_path(manifest.root, device, m, precision).exists() for m in manifest.modalities):
        build = f"avemo build {manifest.root} --precision {precision}"
        return f"no {precision} engines for {device.describe()} ({build})"
    return None


def load_runner(
    manifest: Manifest,
    backend: str,
    precision: str,
    graph: str,
    threads: int | None,
    checkpoint: Path | None,
    baseline: Baseline | None = None,
) -> Backend:
    if backend == "torch":
        if baseline is None or checkpoint is None:
            raise AvemoError("the PyTorch baseline needs a checkpoint and avemo[train] (`avemo profile`)")
        return baseline(checkpoint, graph, threads)
    return open_backend(manifest, graph, precision, backend, threads, timed=True, workload="inference")


def default_checkpoint(manifest: Manifest) -> Path | None:
    source = manifest.checkpoint
    return Path(source) if source else None


def run_profile(
    models: Path,
    backends: list[str],
    precisions: list[str],
    graphs: list[str],
    batches: list[int],
    seconds: list[float],
    iters: int = MLPERF_MIN_QUERIES,
    rounds: int = 4,
    warmup: int = 5,
    threads: int | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
    duration: float | None = None,
    on_case: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
    baseline: Baseline | None = None,
) -> dict[str, Any]:
    """Time every available combination; returns the JSON-ready result (cases with raw samples).

    ``duration``: seconds per candidate and shape (``iters`` is then a cap). ``log`` hears first what cannot
    be profiled here and why; ``on_case`` gets the result so far after each shape. Ctrl-C ends the timing
    after the shapes already done: the result has them and ``interrupted: true``. ``baseline``: the PyTorch
    eager runner (``backend="torch"``)."""
    manifest = load_manifest(models)
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(manifest)
    threads = threads or os.cpu_count() or 1
    combos, skipped = _plan(manifest, backends, precisions, checkpoint, baseline, log)
    graphs = [g for g in graphs if g in manifest.modalities] or manifest.modalities
    per_round = max(1, -(-iters // rounds))
    settings = {"iters": per_round * rounds, "rounds": rounds, "warmup": warmup, "threads": threads}
    result: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "machine": machine_info(),
        "models": str(models),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "settings": settings | ({"duration_s": duration} if duration is not None else {}),
        "skipped": skipped,
        "cases": [],
    }
    bar = tqdm(total=len(graphs) * len(batches) * len(seconds), desc="profile", unit="shape", disable=not progress)
    try:
        for graph in graphs:
            runners = {c: load_runner(manifest, *c, graph, threads, checkpoint, baseline) for c in combos}
            try:
                for batch in batches:
                    _time_batch(manifest, result, runners, graph, batch, seconds, (per_round, warmup, rounds, duration),
                                bar, on_case)  # fmt: skip
            finally:
                for runner in runners.values():
                    runner.close()
    except KeyboardInterrupt:  # keep what is measured
        result["interrupted"] = True
        if not result["cases"]:
            raise
    finally:
        bar.close()
    return result


def _plan(
    manifest: Manifest,
    backends: list[str],
    precisions: list[str],
    checkpoint: Path | None,
    baseline: Baseline | None,
    log: Callable[[str], None] | None,
) -> tuple[list[Combo], list[dict[str, Any]]]:
    """The (backend, precision) pairs that run here, and the others with the reason; AvemoError if none runs."""
    skipped, combos = [], []
    for backend in backends:
        for precision in precisions:
            reason = unavailable(manifest, backend, precision, checkpoint, baseline)
            if reason is None:
                combos.append((backend, precision))
            elif not (backend == "torch" and precision != "fp32"):
                skipped.append({"backend": backend, "precision": precision, "reason": reason})
    if not combos:
        raise AvemoError(
            "nothing to profile: " + "; ".join(f"{s['backend']} {s['precision']}: {s['reason']}" for s in skipped)
        )
    for s in skipped if log else ():
        log(f"not profiled: {s['backend']} {s['precision']}: {s['reason']}")
    return combos, skipped


def _time_batch(
    manifest: Manifest,
    result: dict[str, Any],
    runners: dict[Combo, Backend],
    graph: str,
    batch: int,
    seconds: list[float],
    timing: tuple[int, int, int, float | None],
    bar: Any,
    on_case: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Every clip length at one batch size: the runners that take it, interleaved; the result grows in place."""
    per_round, warmup, rounds, duration = timing
    cases, threads = result["cases"], result["settings"]["threads"]
    # An engine takes at most its batch limit (4 clips on an Orin Nano): larger batches are skipped, said.
    fits = [c for c in runners if batch <= getattr(runners[c], "max_batch", batch)]
    result["skipped"] += [
        {"backend": b, "precision": p, "graph": graph, "batch": batch,
         "reason": f"over the engine's limit of {getattr(runners[b, p], 'max_batch', batch)} clips per call"}
        for b, p in runners if (b, p) not in fits
    ]  # fmt: skip
    for secs in seconds:
        bar.update()
        if not fits:
            continue
        inputs = profile_inputs(manifest, graph, batch, secs)
        phases: dict[Combo, list[dict[str, float]]] = {c: [] for c in fits}
        calls = {f"{b}/{p}": _call(runners[b, p], inputs, phases[b, p]) for b, p in fits}
        raw = interleaved_latency(calls, per_round, warmup, rounds, duration)
        for (backend, precision), name in zip(fits, calls, strict=True):
            cases.append(
                _case(backend, precision, graph, batch, secs, threads, raw[name], phases[backend, precision])
            )
        _add_speedups(cases)
        if on_case is not None:
            on_case(result)


def _call(runner: Backend, inputs: dict[str, np.ndarray], phases: list[dict[str, float]]) -> Callable[[], object]:
    def call() -> None:
        runner.infer(inputs)
        split = getattr(runner, "last_phases_ms", None)  # TensorRT: CUDA-event H2D / compute / D2H
        if split:
            phases.append(dict(split))

    return call


def _case(
    backend: str, precision: str, graph: str, batch: int, seconds: float, threads: int, samples: np.ndarray,
    phases: list[dict[str, float]],
) -> dict[str, Any]:  # fmt: skip
    stats = summarize(samples)
    audio_seconds = batch * seconds
    return {
        "backend": backend,
        "precision": precision,
        "graph": graph,
        "batch": batch,
        "seconds": seconds,
        "threads": threads if backend != "trt" else None,
        # The latency percentiles are wall time per call on the host (perf_counter) for every backend;
        # TensorRT's H2D / compute / D2H split beside them comes from CUDA events on its stream.
        "clock": "perf_counter",
        "phases_clock": "cuda-events" if phases else None,
        **{f"{k}_ms" if k != "n" else k: v for k, v in stats.items()},
        "throughput_clips_per_s": 1000.0 * batch / stats["mean"],
        "rtf": stats["p50"] / 1000.0 / audio_seconds,
        "phases_ms": {k: float(np.median([p[k] for p in phases])) for k in phases[0]} if phases else None,
        "samples_ms": samples.round(4).tolist(),
    }


def _add_speedups(cases: list[dict[str, Any]]) -> None:
    """Speed-up of every case over PyTorch eager at the same graph, batch and length (p50 ratio)."""
    base = {(c["graph"], c["batch"], c["seconds"]): c["p50_ms"] for c in cases if c["backend"] == "torch"}
    for c in cases:
        ref = base.get((c["graph"], c["batch"], c["seconds"]))
        c["speedup_vs_torch"] = ref / c["p50_ms"] if ref else None
