"""What `avemo profile` adds beside the latency cases at one reference shape: RSS, FLOPs, the pipeline."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from avemo.runtime.models.manifest import load_manifest
from avemo.runtime.profile.cases import Baseline, profile_inputs
from avemo.runtime.profile.flops import gemm_rate, graph_flops, op_breakdown
from avemo.runtime.profile.memory import peak_rss
from avemo.runtime.profile.pipeline import profile_pipeline


def add_extras(
    result: dict[str, Any],
    rss: bool = True,
    flops: bool = True,
    media: Path | None = None,
    pipeline_precision: str = "fp32",
    repeats: int = 5,
    baseline: Baseline | None = None,
) -> None:
    """RSS per backend (fresh processes), FLOPs vs the GEMM rate, the media pipeline; at the reference shape.

    The reference shape is the profile's first graph at its smallest batch and
    the clip length closest to 10 s (where the targets in docs/BENCHMARKS.md are stated).
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
        shape = (graph, batch, seconds, threads, checkpoint, baseline)
        result["rss"] = [peak_rss(models, b, p, *shape) for b, p in combos]
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
