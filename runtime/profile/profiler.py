"""Latency profiling: backends x precisions x graphs x batch x clip length, and the media pipeline.

Torch-free, so `scripts/profile_latency.py` runs where only the runtime is
installed. The PyTorch eager baseline (``backend="torch"``) is loaded only when
asked for, from `avemo.export.torch_runner` (needs avemo[train]).

Candidates that share a shape are timed interleaved (see ``runtime.profile.timing``),
so a slow spell on a shared machine hits them alike; raw samples are kept.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from avemo.contract import AUDIO_FEATS, AUDIO_LENGTHS, FACE_LENGTHS, FACES, MODALITY_TITLES
from avemo.errors import AvemoError
from avemo.machine import machine_info
from avemo.runtime.models.manifest import Manifest, load_manifest
from avemo.runtime.models.parity import sample_inputs
from avemo.runtime.profile.timing import interleaved_latency, stage, summarize

BACKENDS = ("torch", "ort", "trt")
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")
#: MLPerf Inference's minimum query count for a single-stream run; `--iters` may lower it.
MLPERF_MIN_QUERIES = 1024
FORMAT = "avemo-profile"


class Runner(Protocol):
    def infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def profile_inputs(manifest: Manifest, graph: str, batch: int, seconds: float) -> dict[str, np.ndarray]:
    """Seeded inputs where every clip of the batch is ``seconds`` long (no padding: worst case per batch)."""
    inputs = sample_inputs(manifest.features, graph, batch, seconds, seed=0)
    for lengths, padded in ((AUDIO_LENGTHS, AUDIO_FEATS), (FACE_LENGTHS, FACES)):
        if lengths in inputs:
            inputs[lengths][:] = inputs[padded].shape[1]
    return inputs


def unavailable(manifest: Manifest, backend: str, precision: str, checkpoint: Path | None) -> str | None:
    """Why (backend, precision) cannot be profiled here, or None."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}"
    if backend == "torch":
        if precision != "fp32":
            return "the PyTorch baseline is fp32 eager"
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'avemo[train]')"
        if checkpoint is None or not Path(checkpoint).is_file():
            return f"checkpoint {checkpoint} not found (pass --checkpoint)"
        return None
    if precision not in manifest.precisions:
        return f"no {precision} graphs in {manifest.root}"
    if backend == "trt":
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
    manifest: Manifest, backend: str, precision: str, graph: str, threads: int | None, checkpoint: Path | None
) -> Runner:
    if backend == "torch":
        module = importlib.import_module("avemo.export.torch_runner")  # torch only when the baseline is wanted
        return module.TorchRunner(checkpoint, graph, threads)
    if backend == "trt":
        from avemo.runtime.backends.trt import TrtBackend

        return TrtBackend(manifest, graph, precision, timed=True)
    from avemo.runtime.backends.ort import OrtBackend

    return OrtBackend(manifest.graph_path(graph, precision), threads)


def default_checkpoint(manifest: Manifest) -> Path | None:
    source = manifest.data.get("source", {}).get("checkpoint")
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
) -> dict[str, Any]:
    """Time every available combination; returns the JSON-ready result (cases with raw samples).

    ``duration``: seconds per candidate and shape (``iters`` is then a cap). ``log`` hears first what cannot
    be profiled here and why; ``on_case`` gets the result so far after each shape. Ctrl-C ends the timing
    after the shapes already done: the result has them and ``interrupted: true``."""
    manifest = load_manifest(models)
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(manifest)
    threads = threads or os.cpu_count() or 1
    skipped, combos = [], []
    for backend in backends:
        for precision in precisions:
            reason = unavailable(manifest, backend, precision, checkpoint)
            if reason is None:
                combos.append((backend, precision))
            elif not (backend == "torch" and precision != "fp32"):
                skipped.append({"backend": backend, "precision": precision, "reason": reason})
    graphs = [g for g in graphs if g in manifest.modalities] or manifest.modalities
    if not combos:
        raise AvemoError(
            "nothing to profile: " + "; ".join(f"{s['backend']} {s['precision']}: {s['reason']}" for s in skipped)
        )
    for s in skipped if log else ():
        log(f"not profiled: {s['backend']} {s['precision']}: {s['reason']}")
    per_round = max(1, -(-iters // rounds))
    shapes = [(g, b, s) for g in graphs for b in batches for s in seconds]
    cases: list[dict[str, Any]] = []
    settings = {"iters": per_round * rounds, "rounds": rounds, "warmup": warmup, "threads": threads}
    result = {
        "format": FORMAT,
        "version": 1,
        "machine": machine_info(),
        "models": str(models),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "settings": settings | ({"duration_s": duration} if duration is not None else {}),
        "skipped": skipped,
        "cases": cases,
    }
    bar = tqdm(total=len(shapes), desc="profile", unit="shape", disable=not progress)
    try:
        for graph in graphs:
            runners = {c: load_runner(manifest, *c, graph, threads, checkpoint) for c in combos}
            for batch in batches:
                # An engine takes at most its batch limit (4 clips on an Orin Nano): larger batches are skipped, said.
                fits = [c for c in combos if batch <= getattr(runners[c], "max_batch", batch)]
                skipped += [
                    {"backend": b, "precision": p, "graph": graph, "batch": batch,
                     "reason": f"over the engine's limit of {runners[b, p].max_batch} clips per call"}
                    for b, p in combos if (b, p) not in fits
                ]  # fmt: skip
                for secs in seconds:
                    bar.update()
                    if not fits:
                        continue
                    inputs = profile_inputs(manifest, graph, batch, secs)
                    phases: dict[tuple[str, str], list[dict[str, float]]] = {c: [] for c in fits}
                    calls = {f"{b}/{p}": _call(runners[b, p], inputs, phases[b, p]) for b, p in fits}
                    raw = interleaved_latency(calls, per_round, warmup, rounds, duration)
                    for (backend, precision), name in zip(fits, calls, strict=True):
                        phase = phases[backend, precision]
                        cases.append(_case(backend, precision, graph, batch, secs, threads, raw[name], phase))
                    _add_speedups(cases)
                    if on_case is not None:
                        on_case(result)
            for runner in runners.values():
                getattr(runner, "close", lambda: None)()
    except KeyboardInterrupt:  # keep what is measured
        result["interrupted"] = True
        if not cases:
            raise
    finally:
        bar.close()
    return result


def _call(runner: Runner, inputs: dict[str, np.ndarray], phases: list[dict[str, float]]) -> Callable[[], object]:
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


# --- peak RSS, one fresh process per backend -------------------------------------------------


def peak_rss(
    models: Path, backend: str, precision: str, graph: str, batch: int, seconds: float, threads: int | None,
    checkpoint: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """Peak resident memory of a fresh process that loads one backend and runs it (and whether torch got loaded)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_rss_child, models, backend, precision, graph, batch, seconds, threads, checkpoint).result()


def _rss_child(
    models: Path, backend: str, precision: str, graph: str, batch: int, seconds: float, threads: int | None,
    checkpoint: Path | None,
) -> dict[str, Any]:  # fmt: skip
    manifest = load_manifest(models, verify=False)
    runner = load_runner(manifest, backend, precision, graph, threads, checkpoint)
    inputs = profile_inputs(manifest, graph, batch, seconds)
    for _ in range(5):
        runner.infer(inputs)
    return {
        "backend": backend,
        "precision": precision,
        "peak_rss_mb": _peak_rss_mb(),
        "torch_loaded": "torch" in sys.modules,
    }


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM (ru_maxrss keeps the forking parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


# --- FLOPs and the machine's GEMM rate: how close is the best graph to the hardware? ----------


def graph_flops(path: Path, inputs: dict[str, np.ndarray]) -> float:
    """Multiply-add FLOPs (2 per MAC) of Conv, MatMul and Gemm at these inputs (the rest is not counted)."""
    return float(sum(node_flops(path, inputs).values()))


def node_flops(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Node name -> multiply-add FLOPs (2 per MAC) of each Conv, MatMul and Gemm at these inputs."""
    onnx = _require_onnx()
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    known = {i.name for i in model.graph.initializer}
    wanted = list(dict.fromkeys(t for n in nodes for t in (*n.input[:2], n.output[0]) if t and t not in known))
    outputs = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in outputs and name not in {i.name for i in model.graph.input}:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    model_bytes = model.SerializeToString()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = _session_with_weights(ort, model_bytes, path, options)
    names = [o.name for o in session.get_outputs()]
    shapes = {n: v.shape for n, v in zip(names, session.run(None, inputs), strict=True)}
    shapes.update({k: v.shape for k, v in inputs.items()})
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes.update(weights)
    flops: dict[str, float] = {}
    for node in nodes:
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            macs = np.prod(shapes[node.input[1]][1:])
        elif node.op_type == "MatMul":
            macs = shapes[node.input[0]][-1]
        else:
            a = shapes[node.input[0]]
            macs = a[0] if any(at.name == "transA" and at.i for at in node.attribute) else a[-1]
        flops[node.name] = float(2.0 * np.prod(out) * macs)
    return flops


def _session_with_weights(ort: Any, model_bytes: bytes, path: Path, options: Any) -> Any:
    """An ORT session of a changed graph whose weights stay in the original's external-data file."""
    tmp = Path(path).with_name(f".flops-{os.getpid()}-{Path(path).name}")
    tmp.write_bytes(model_bytes)
    try:
        return ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    finally:
        tmp.unlink(missing_ok=True)


def gemm_rate(threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    """Sustained float32 GEMM rate (FLOP/s) of ONNX Runtime's CPU provider with ``threads`` threads."""
    onnx = _require_onnx()
    import onnxruntime as ort

    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [size, size]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.random((size, size), dtype=np.float32) for n in ("a", "b")}
    session.run(None, feeds)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feeds)
        runs += 1
    return 2.0 * size**3 * runs / (time.perf_counter() - started)


def op_breakdown(path: Path, inputs: dict[str, np.ndarray], threads: int, runs: int = 10) -> dict[str, float]:
    """Where ONNX Runtime's CPU time goes: ms per call by operator type (its own profiler), largest first."""
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, inputs)  # warm-up, excluded below
        session.end_profiling()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + event["dur"] / 1000.0 / runs
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def _require_onnx() -> Any:
    from avemo.deps import require

    return require("onnx", "pip install onnx (FLOP counting reads the graph)")


# --- the media pipeline -------------------------------------------------------------------------


def profile_pipeline(
    models: Path, media: Path, precision: str = "fp32", threads: int | None = None, repeats: int = 5
) -> dict[str, Any]:
    """Per-stage time for one real media file: decode, features, face detection, inference (ONNX Runtime)."""
    from avemo.runtime.media.decode import media_duration
    from avemo.runtime.recognizer import Recognizer, batch_inputs

    recognizer = Recognizer(models, precision, threads)
    stages: dict[str, list[float]] = {}
    totals: list[float] = []
    modality = ""
    for _ in range(repeats):
        timings: dict[str, float] = {}
        clip, _ = recognizer.prepare(media, timings=timings)  # the Recognizer's own path, stage by stage
        modality = recognizer.choose(len(clip.audio) > 0, len(clip.faces) > 0)
        with stage(timings, "inference"):
            recognizer.backends[modality].infer(batch_inputs([clip], modality))
        for name, ms in timings.items():
            stages.setdefault(name, []).append(ms)
        totals.append(sum(timings.values()))
    duration = media_duration(media)
    table = {name: float(np.median(v)) for name, v in stages.items()}
    return {
        "media": str(media),
        "duration_s": duration,
        "graph": modality,
        "precision": precision,
        "threads": threads or os.cpu_count(),
        "repeats": repeats,
        "stages_ms": table,
        "total_ms": float(np.median(totals)),
        "rtf": float(np.median(totals)) / 1000.0 / duration,
        "samples_ms": {k: [round(x, 3) for x in v] for k, v in stages.items()},
    }


def add_extras(
    result: dict[str, Any],
    rss: bool = True,
    flops: bool = True,
    media: Path | None = None,
    pipeline_precision: str = "fp32",
    repeats: int = 5,
) -> None:
    """RSS per backend (fresh processes), FLOPs vs the GEMM rate, the media pipeline; at the reference shape.

    The reference shape is the profile's first graph at its smallest batch and
    the clip length closest to 10 s (the length latency targets are stated at).
    """
    cases = result["cases"]
    graph = cases[0]["graph"]
    batch = min(c["batch"] for c in cases)
    seconds = min({c["seconds"] for c in cases}, key=lambda s: abs(s - 10.0))
    threads = result["settings"]["threads"]
    models = Path(result["models"])
    checkpoint = Path(result["checkpoint"]) if result["checkpoint"] else None
    if rss:
        combos = list(dict.fromkeys((c["backend"], c["precision"]) for c in cases))
        result["rss"] = [peak_rss(models, b, p, graph, batch, seconds, threads, checkpoint) for b, p in combos]
    notes = result.setdefault("notes", [])
    cpu = [
        c for c in cases if (c["graph"], c["batch"], c["seconds"]) == (graph, batch, seconds) and c["backend"] != "trt"
    ]
    if flops and not cpu:
        notes.append("FLOP comparison skipped: it rates CPU backends and none was profiled")
    elif flops and importlib.util.find_spec("onnx") is None:
        notes.append("FLOP count skipped: it reads the graph with onnx (pip install onnx)")
    elif flops:
        best = min(cpu, key=lambda c: c["p50_ms"])
        manifest = load_manifest(models, verify=False)
        fp32, inputs = manifest.graph_path(graph, "fp32"), profile_inputs(manifest, graph, batch, seconds)
        count = graph_flops(fp32, inputs)
        rate = gemm_rate(threads)
        ideal_ms = 1000 * count / rate
        ops = op_breakdown(fp32, inputs, threads)
        result["flops"] = {
            "graph": graph, "batch": batch, "seconds": seconds, "threads": threads, "flops": count, "gemm_size": 1024,
            "gemm_flops_per_s": rate, "ideal_ms": ideal_ms, "best": f"{best['backend']} {best['precision']}",
            "best_ms": best["p50_ms"], "ratio": best["p50_ms"] / ideal_ms, "ort_fp32_ms_by_op": ops,
        }  # fmt: skip
    if media is not None:
        result["pipeline"] = profile_pipeline(models, media, pipeline_precision, threads, repeats)


# --- writers ------------------------------------------------------------------------------------

CSV_FIELDS = (
    "backend", "precision", "graph", "batch", "seconds", "threads", "clock", "p50_ms", "p90_ms", "p99_ms", "max_ms",
    "mean_ms", "n", "throughput_clips_per_s", "rtf", "speedup_vs_torch", "machine",
)  # fmt: skip


def write_outputs(result: dict[str, Any], out: Path, stem: str = "profile", plot: bool = True) -> dict[str, Path]:
    """profile.json (raw samples), profile.csv, profile.md and profile.png; each names the machine."""
    from avemo.io import atomic_write_bytes, atomic_write_json

    out = Path(out)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("json", "csv", "md")}
    atomic_write_json(paths["json"], result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in result["cases"]:
        writer.writerow({**case, "machine": result["machine"]["summary"]})
    atomic_write_bytes(paths["csv"], buffer.getvalue().encode())
    atomic_write_bytes(paths["md"], markdown(result).encode())
    if plot and result["cases"] and importlib.util.find_spec("matplotlib") is not None:
        paths["png"] = out / f"{stem}.png"
        plot_latency(result, paths["png"])
    return paths


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    gpu = ", ".join(f"{g['name']} (driver {g['driver']})" for g in m["gpus"]) or "no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        f"Machine: {m['summary']}; {gpu}; {versions}.",
        (
            f"Up to {s['iters']} timed calls or {s['duration_s']:g} s per candidate and shape"
            if s.get("duration_s") is not None
            else f"{s['iters']} timed calls per case"
        )
        + f" in {s['rounds']} interleaved rounds after {s['warmup']} warm-up calls; "
        f"CPU threads: {s['threads']}.",
        "",
        "| graph | batch | clip s | backend | precision | p50 ms | p90 ms | p99 ms | max ms "
        "| clips/s | RTF | vs torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        speedup = f"{c['speedup_vs_torch']:.2f}x" if c["speedup_vs_torch"] else "-"
        lines.append(
            f"| {MODALITY_TITLES[c['graph']]} | {c['batch']} | {c['seconds']:g} | {c['backend']} | {c['precision']} | "
            f"{c['p50_ms']:.2f} | {c['p90_ms']:.2f} | {c['p99_ms']:.2f} | {c['max_ms']:.2f} | "
            f"{c['throughput_clips_per_s']:.1f} | {c['rtf']:.4f} | {speedup} |"
        )
    for extra in ("rss", "flops", "pipeline"):
        if result.get(extra):
            lines += ["", *_extra_markdown(extra, result[extra])]
    for skip in result["skipped"]:
        where = f" at batch {skip['batch']} ({MODALITY_TITLES[skip['graph']]})" if "batch" in skip else ""
        lines.append(f"\nSkipped {skip['backend']} {skip['precision']}{where}: {skip['reason']}")
    lines += [f"\n{note}" for note in result.get("notes", [])]
    if importlib.util.find_spec("matplotlib") is None:
        lines.append("\nNo plot: matplotlib is not installed (pip install matplotlib).")
    return "\n".join(lines) + "\n"


def _extra_markdown(kind: str, data: Any) -> list[str]:
    if kind == "rss":
        rows = [
            f"| {r['backend']} | {r['precision']} | {r['peak_rss_mb']:.0f} | {'yes' if r['torch_loaded'] else 'no'} |"
            for r in data
        ]
        return ["| backend | precision | peak RSS MB (fresh process) | torch loaded |", "|---|---|---|---|", *rows]
    if kind == "flops":
        return [
            f"FLOPs ({MODALITY_TITLES[data['graph']]}, batch {data['batch']}, {data['seconds']:g} s, "
            "Conv/MatMul/Gemm only): "
            f"{data['flops'] / 1e9:.3f} GFLOP. Sustained GEMM rate (ONNX Runtime MatMul {data['gemm_size']}^3, "
            f"{data['threads']} threads): {data['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s. Ideal time "
            f"{data['ideal_ms']:.2f} ms; best CPU graph {data['best']} p50 {data['best_ms']:.2f} ms = "
            f"{data['ratio']:.2f}x the ideal.",
            "",
            "Where ONNX Runtime fp32 spends its time there (its profiler, ms per call by operator type):",
            "",
            "| operator | ms |",
            "|---|---|",
            *(f"| {op} | {ms:.2f} |" for op, ms in list(data["ort_fp32_ms_by_op"].items())[:12]),
        ]
    rows = [f"| {stage} | {ms:.1f} |" for stage, ms in data["stages_ms"].items()]
    return [
        f"Pipeline, {data['media']} ({data['duration_s']:.1f} s, {MODALITY_TITLES[data['graph']]} {data['precision']}, "
        f"median of {data['repeats']}):",
        "",
        "| stage | ms |",
        "|---|---|",
        *rows,
        f"| total | {data['total_ms']:.1f} (RTF {data['rtf']:.4f}) |",
    ]


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """p50 latency vs clip length, one line per backend/precision, one panel per graph (batch 1 or the smallest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    graphs = list(dict.fromkeys(c["graph"] for c in cases))
    batch = min(c["batch"] for c in cases)
    fig, axes = plt.subplots(1, len(graphs), figsize=(5 * len(graphs), 4), squeeze=False)
    for ax, graph in zip(axes[0], graphs, strict=True):
        mine = [c for c in cases if c["graph"] == graph and c["batch"] == batch]
        for key in dict.fromkeys((c["backend"], c["precision"]) for c in mine):
            line = sorted((c for c in mine if (c["backend"], c["precision"]) == key), key=lambda c: c["seconds"])
            xs = [c["seconds"] for c in line]
            p50 = np.array([c["p50_ms"] for c in line])
            lo = p50 - np.array([np.percentile(c["samples_ms"], 10) for c in line])
            hi = np.array([c["p90_ms"] for c in line]) - p50
            ax.errorbar(xs, p50, yerr=[lo, hi], marker="o", capsize=3, label=f"{key[0]} {key[1]}")
        ax.set(
            title=f"{MODALITY_TITLES[graph]}, batch {batch}", xlabel="clip seconds", ylabel="latency ms (p50, p10-p90)"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(result["machine"]["summary"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
