"""Host cost per call: the time and copies outside the graph run, for a live 5-s window and a 4 x 30-s batch.

    .venv/bin/python scripts/bench_host.py --make-model /tmp/host-paper --preset paper   # untrained, exported
    PYTHONPATH=tests/fakes .venv/bin/python scripts/bench_host.py /tmp/host-paper/models --backend ort,trt --json h.json

Each call goes from extracted features (what the stream cutter hands over: log-Mel frames and uint8 face
crops) to probabilities through the Recognizer: ``recognize_features`` for the live window (batch 1), and
``_clip_input`` per clip then ``infer`` for the batch. The script feeds features, never graph inputs: the
dtypes and shapes the graphs take (uint8 faces, length buckets) stay the Recognizer's and the backends' own,
so a change there is measured as it is. Each call's wall time is split into the graph run (ONNX Runtime's
``session.run``; TensorRT's ``execute_async_v3``, the async copies and the stream's synchronize) and the host
side: everything else, broken down by the stages found in this checkout (a stage absent after a refactoring
is reported as such, its time then falls in "other").

Bytes copied per stage: the arrays a stage returns that share no memory with what it was given (staging
into page-locked buffers counts; a stage that passes its input through does not). "host typical": the
stages' medians and the median of the rest, summed (on a shared machine a preempted call's few ms land in
any one stage). "peak extra": tracemalloc's peak of host memory allocated during a call, in a separate
untimed pass. On the TensorRT doubles (``PYTHONPATH=tests/fakes``) the graph run is not TensorRT's: only
the host side means anything there (the double runs a discrete GPU, ``AVEMO_DOUBLE_GPUS``, so that inputs
are staged and copied as on one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from avemo.machine import describe
from avemo.runtime.media.extract import MediaFeatures
from avemo.runtime.recognizer import Recognizer

os.environ.setdefault("AVEMO_DOUBLE_GPUS", "NVIDIA H200:9.0:143771:0")  # read by the pycuda double only

#: Host stages timed where this checkout has them: (label, module, owner attribute or "", function name).
#: Bytes counted: those of the new arrays a stage returns, or for ``fill_batch`` (which writes a batch into
#: the arrays it is given: the backend's own, page-locked on TensorRT) those of the arrays it fills.
STAGES = (
    ("features to arrays", "avemo.runtime.recognizer", "Recognizer", "_clip_input"),
    ("_check", "avemo.runtime.recognizer", "Recognizer", "_check"),
    ("batch_inputs", "avemo.runtime.recognizer", "", "batch_inputs"),
    ("fill_batch", "avemo.runtime.recognizer", "", "fill_batch"),
    ("backend check", "avemo.runtime.backends.base", "BackendBase", "checked"),
    ("staging", "avemo.runtime.backends.gpu", "IOBuffer", "stage"),
)
WRITES_INTO_FIRST_ARGUMENT = {"fill_batch"}
#: The graph run: (module, owner attribute, function names) patched on the class.
DEVICE = {
    "ort": (),  # ONNX Runtime's session.run: wrapped on each backend's session (see _graph_timers)
    "trt": (
        ("pycuda.driver", "", ("memcpy_htod_async", "memcpy_dtoh_async")),
        ("pycuda.driver", "Stream", ("synchronize",)),
    ),
}


class Probe:
    """Wraps functions to add up their time and the bytes of the new arrays they return, per label."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.found: list[str] = []

    def reset(self) -> None:
        self.ns = dict.fromkeys(self.ns, 0)
        self.bytes = dict.fromkeys(self.bytes, 0)

    def wrap(self, label: str, fn: Callable[..., Any], count_bytes: bool = True) -> Callable[..., Any]:
        self.ns.setdefault(label, 0)
        self.bytes.setdefault(label, 0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            out = fn(*args, **kwargs)
            self.ns[label] += time.perf_counter_ns() - start
            if count_bytes and label in WRITES_INTO_FIRST_ARGUMENT:
                self.bytes[label] += sum(a.nbytes for a in _arrays(args[0]))
            elif count_bytes:
                given = list(_arrays((args, kwargs)))
                self.bytes[label] += sum(a.nbytes for a in _arrays(out) if not _shares(a, given))
            return out

        return timed


def _arrays(value: Any) -> Iterator[np.ndarray]:
    """The numpy arrays in a value (dicts, lists, tuples, dataclasses such as ClipInput and MediaFeatures)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _arrays(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _arrays(getattr(value, f.name))


def _shares(array: np.ndarray, given: list[np.ndarray]) -> bool:
    return any(np.may_share_memory(array, g) for g in given)


@contextmanager
def _patched(probe: Probe, backend: str) -> Iterator[None]:
    """The stages (and, for TensorRT, the graph-run calls) wrapped while inside."""
    import importlib

    undo = []
    targets = [(label, m, o, f, True) for label, m, o, f in STAGES]
    targets += [("graph run", m, o, f, False) for m, o, names in DEVICE[backend] for f in names]
    for label, module_name, owner_name, name, count in targets:
        try:
            owner = getattr(importlib.import_module(module_name), owner_name) if owner_name else None
            owner = owner or importlib.import_module(module_name)
            original = getattr(owner, name)
        except (ImportError, AttributeError):
            continue  # not in this checkout (or this backend): reported absent
        if label not in probe.found:
            probe.found.append(label)
        setattr(owner, name, probe.wrap(label, original, count))
        undo.append((owner, name, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


class _Timed:
    """A session or execution context whose graph-run method is timed (every other attribute passes through)."""

    def __init__(self, inner: Any, name: str, probe: Probe) -> None:
        self._inner, self._run = inner, probe.wrap("graph run", getattr(inner, name), False)
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return self._run if attr == self._name else getattr(self._inner, attr)


def _graph_timers(recognizer: Recognizer, probe: Probe) -> None:
    for graph in recognizer.backends.values():
        if hasattr(graph, "session"):
            graph.session = _Timed(graph.session, "run", probe)
        if hasattr(graph, "context"):
            graph.context = _Timed(graph.context, "execute_async_v3", probe)


def _features(recognizer: Recognizer, seconds: float, seed: int) -> MediaFeatures:
    """A clip's features as the cutter hands them over: log-Mel frames, uint8 RGB crops at 3 fps."""
    f = recognizer.features
    rng = np.random.default_rng(seed)
    times = [i / f.fps for i in range(round(seconds * f.fps))]
    crops = [rng.integers(0, 256, (f.face_size, f.face_size, 3), np.uint8) for _ in times]
    fbank = rng.normal(0, 3, (round(seconds * f.frames_per_second), f.num_mel_bins)).astype(np.float32)
    return MediaFeatures(fbank, crops, len(times), [], {}, times)


def workloads(recognizer: Recognizer) -> dict[str, Callable[[], Any]]:
    live = _features(recognizer, 5.0, 0)
    batch = [_features(recognizer, 30.0, 1 + i) for i in range(4)]
    return {
        "live 5-s window, batch 1": lambda: recognizer.recognize_features(live, "live", (0.0, 5.0), 0.0),
        "4 x 30-s batch": lambda: recognizer.infer([recognizer._clip_input(f) for f in batch]),
    }


class Bench:
    """One backend's Recognizer with its probes; ``round()`` adds ``calls`` timed calls per workload."""

    def __init__(self, recognizer: Recognizer, backend: str) -> None:
        self.recognizer, self.backend, self.probe = recognizer, backend, Probe()
        _graph_timers(recognizer, self.probe)
        self.runs = workloads(recognizer)
        self.rows: dict[str, list[dict[str, int]]] = {name: [] for name in self.runs}
        self.copied: dict[str, dict[str, int]] = {}
        self.peak: dict[str, int] = {}

    def round(self, calls: int, warmup: int) -> None:
        with _patched(self.probe, self.backend):
            for name, run in self.runs.items():
                for _ in range(warmup):
                    run()
                for _ in range(calls):
                    self.probe.reset()
                    start = time.perf_counter_ns()
                    run()
                    total = time.perf_counter_ns() - start
                    self.rows[name].append({"total": total, **self.probe.ns})
                self.copied[name] = dict(self.probe.bytes)  # the same every call: the shapes do not change
                tracemalloc.start()
                base = tracemalloc.get_traced_memory()[0]
                run()
                self.peak[name] = tracemalloc.get_traced_memory()[1] - base
                tracemalloc.stop()

    def summary(self) -> dict[str, Any]:
        return {n: _summary(self.rows[n], self.copied[n], self.peak[n], self.probe.found) for n in self.runs}


def _summary(rows: list[dict[str, int]], copied: dict[str, int], peak: int, found: list[str]) -> dict[str, Any]:
    def us(values: list[float]) -> dict[str, float]:
        return {"p50": statistics.median(values) / 1e3, "p90": float(np.percentile(values, 90)) / 1e3}

    host = [r["total"] - r.get("graph run", 0) for r in rows]
    stages = [label for label, *_ in STAGES]
    other = [h - sum(r.get(s, 0) for s in stages) for h, r in zip(host, rows, strict=True)]
    typical = {s: statistics.median(r[s] for r in rows) / 1e3 for s in stages if s in found}
    return {
        "total_us": us([r["total"] for r in rows]),
        "graph_us": us([r.get("graph run", 0) for r in rows]),
        "host_us": us(host),
        "stages_us": {s: typical.get(s) for s in stages},
        "other_us": statistics.median(other) / 1e3,
        # a preempted call's few ms land in one stage or another: the stages' medians summed is the typical call
        "host_typical_us": sum(typical.values()) + statistics.median(other) / 1e3,
        "bytes_copied": {s: copied[s] if s in found else None for s in stages},
        "peak_extra_bytes": peak,
        "calls": len(rows),
    }


def make_model(out: Path, preset: str) -> Path:
    """An untrained co-learning model of ``preset`` exported to ``out`` (fp32), as tests/conftest.py makes one:
    its weights do not matter to the host cost, its shapes do."""
    import torch

    from avemo.config import PRESETS, TrainConfig, model_config_for_regime
    from avemo.export.exporter import export_run
    from avemo.train.checkpoint import save_checkpoint
    from avemo.train.model import CrossModalTransformer

    torch.manual_seed(0)
    model = CrossModalTransformer(model_config_for_regime(PRESETS[preset], "colearn")).eval()
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "colearn.pt", model, TrainConfig(regime="colearn"), valid={"av": {"average": {"mF1": 0.0}}})
    export_run(out / "colearn.pt", out / "models", ("fp32",), force=True, log=lambda *_: None)
    return out / "models"


def open_recognizer(models: Path, backend: str, threads: int, scratch: Path) -> Recognizer:
    """ONNX Runtime on ``models``; TensorRT on a copy of it (engines built there, through the doubles here)."""
    if backend == "ort":
        return Recognizer(models, "fp32", threads, backend="ort")
    from avemo.runtime.backends.build import build_engine
    from avemo.runtime.backends.trt import current_device
    from avemo.runtime.models.manifest import load_manifest

    copy = scratch / "trt-models"
    shutil.copytree(models, copy, ignore=shutil.ignore_patterns("engines"))
    manifest = load_manifest(copy)
    for modality in manifest.modalities:
        build_engine(manifest, modality, "fp32", current_device(), log=lambda *_: None)
    return Recognizer(copy, "fp32", threads, backend="trt")


def table(results: dict[str, dict[str, Any]]) -> str:
    stages = [label for label, *_ in STAGES]
    head = [
        "backend",
        "workload",
        "total p50",
        "graph p50",
        "host p50",
        "host p90",
        "host typical",
        *stages,
        "other",
        "copied MB",
        "peak extra MB",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for backend, per in results.items():
        for name, r in per.items():
            copied = sum(v for v in r["bytes_copied"].values() if v)
            stage_us = [f"{v:.0f}" if v is not None else "absent" for v in r["stages_us"].values()]
            cells = [
                backend,
                name,
                f"{r['total_us']['p50']:.0f}",
                f"{r['graph_us']['p50']:.0f}",
                f"{r['host_us']['p50']:.0f}",
                f"{r['host_us']['p90']:.0f}",
                f"{r['host_typical_us']:.0f}",
                *stage_us,
                f"{r['other_us']:.0f}",
                f"{copied / 1e6:.2f}",
                f"{r['peak_extra_bytes'] / 1e6:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    per_stage = "; ".join(
        f"{b} {n}: " + ", ".join(f"{s} {v / 1e6:.2f}" for s, v in r["bytes_copied"].items() if v)
        for b, per in results.items()
        for n, r in per.items()
    )
    return "\n".join([*lines, "", "Times in microseconds per call; MB copied per stage: " + per_stage])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="?", help="an exported model folder")
    parser.add_argument("--make-model", type=Path, help="export an untrained model to this folder, then exit")
    parser.add_argument("--preset", default="paper", help="--make-model's preset (paper: the deployed shapes)")
    parser.add_argument("--backend", default="ort", help="ort, trt or ort,trt (trt: through the doubles here)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime's threads")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per workload and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the backends interleaved")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.make_model:
        print(make_model(args.make_model, args.preset))
        return
    if args.models is None:
        parser.error("give a model folder (or --make-model DIR)")
    with tempfile.TemporaryDirectory(prefix="bench-host-") as scratch:
        benches = {
            b: Bench(open_recognizer(args.models, b, args.threads, Path(scratch)), b) for b in args.backend.split(",")
        }
        for r in range(args.rounds):
            for bench in list(benches.values())[r % len(benches) :] + list(benches.values())[: r % len(benches)]:
                bench.round(args.calls, args.warmup if r == 0 else 1)
        results = {b: bench.summary() for b, bench in benches.items()}
        for bench in benches.values():
            bench.recognizer.close()
    print(f"Machine: {describe()}\nModel: {args.models}\n")
    print(table(results))
    if args.json:
        settings = {"models": str(args.models), "threads": args.threads, "calls": args.calls, "rounds": args.rounds}
        args.json.write_text(json.dumps({"machine": describe(), "settings": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
