"""Accuracy of each precision's graphs on cache splits (Table-2 averages, label agreement with fp32), their CPU
latency, and the report written from both."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from avemo.calibration.data import batches, usable
from avemo.contract import LABELS, MODALITY_TITLES, graph_file
from avemo.runtime.backends import open_onnx
from avemo.runtime.backends.parity import sample_inputs
from avemo.runtime.models.manifest import Manifest
from avemo.runtime.timing import interleaved_latency, summarize
from avemo.train.cache import CacheSplit
from avemo.train.metrics import emotion_f1

#: The accuracy target (docs/DEPLOYMENT.md): A+V mean macro F1 may drop at most this many points against fp32.
MAX_MF1_DROP = 0.5


def predict_graph(
    path: Path, split: CacheSplit, modality: str, batch_size: int = 16, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [N, 6] of one graph over the split's clips that have ``modality``, and their indices."""
    backend = open_onnx(path, threads=threads, workload="inference")
    indices = usable(split, modality)
    probs = np.zeros((len(indices), len(LABELS)), np.float32)
    where = {int(i): k for k, i in enumerate(indices)}
    for chunk, inputs in batches(split, indices, modality, batch_size):
        probs[[where[int(i)] for i in chunk]] = backend.infer(inputs)
    return probs, indices


def accuracy_report(
    graph_dirs: dict[str, Path], splits: dict[str, CacheSplit], modalities: list[str], threads: int | None = None
) -> dict[str, Any]:
    """{split: {modality: {precision: {wF1, mF1, agreement, mF1_drop}}}} with fp32 as the reference."""
    report: dict[str, Any] = {}
    jobs = [(s, m, p) for s in splits for m in modalities for p in graph_dirs]
    results: dict[tuple[str, str, str], np.ndarray] = {}
    for split_name, modality, precision in tqdm(jobs, desc="accuracy", unit="graph", leave=False):
        split = splits[split_name]
        probs, idx = predict_graph(graph_dirs[precision] / graph_file(modality), split, modality, threads=threads)
        results[split_name, modality, precision] = probs
        ref = results[split_name, modality, "fp32"]
        f1 = emotion_f1(split.labels[idx], probs)["average"]
        entry = {
            "wF1": 100 * f1["wF1"],
            "mF1": 100 * f1["mF1"],
            "clips": len(idx),
            "label_agreement": float(((probs >= 0.5) == (ref >= 0.5)).mean()),
            "max_abs_diff": float(np.abs(probs - ref).max()),
        }
        fp32 = report.get(split_name, {}).get(modality, {}).get("fp32", entry)
        entry["mF1_drop"] = fp32["mF1"] - entry["mF1"]
        report.setdefault(split_name, {}).setdefault(modality, {})[precision] = entry
    return report


def target_graph(report: dict[str, Any]) -> str:
    """The graph the target is judged on: A+V, or a baseline model's only graph."""
    graphs = list(next(iter(report.values())))
    return "av" if "av" in graphs else graphs[0]


def mf1_drop(report: dict[str, Any], precision: str, split: str) -> float:
    return float(report[split][target_graph(report)][precision]["mF1_drop"])


def meets_target(report: dict[str, Any], precision: str, split: str, limit: float = MAX_MF1_DROP) -> bool:
    return mf1_drop(report, precision, split) <= limit


def cpu_latency(
    manifest: Manifest,
    graph_dirs: dict[str, Path],
    candidates: list[str],
    seconds: float,
    rounds: int,
    threads: int | None,
) -> dict[str, Any]:
    """p50/p90 of fp32 and each INT8 candidate on one clip, interleaved (this machine is noisy)."""
    modality = "av" if "av" in manifest.modalities else manifest.modalities[0]
    inputs = sample_inputs(manifest.features, modality, 1, seconds, seed=0)
    names = ["fp32", *candidates]
    runners = {n: open_onnx(graph_dirs[n] / graph_file(modality), "ort", threads, workload="inference") for n in names}
    iters = 10
    raw = interleaved_latency({n: (lambda b=b: b.infer(inputs)) for n, b in runners.items()}, iters, 3, rounds)
    return {
        "graph": modality,
        "seconds": seconds,
        "batch": 1,
        "threads": threads or os.cpu_count(),
        "rounds": rounds,
        "iters": iters,
        "results": {n: summarize(v) for n, v in raw.items()},
        "samples_ms": {n: v.round(4).tolist() for n, v in raw.items()},
    }


def report_markdown(
    report: dict[str, Any],
    latency: dict[str, Any] | None = None,
    search: dict[str, Any] | None = None,
    limit: float = MAX_MF1_DROP,
) -> str:
    lines = [
        "# INT8 accuracy report",
        "",
        f"Table-2 averages over the six emotions (percent); agreement = thresholded labels equal to fp32's. "
        f"Target: mean mF1 drop <= {limit} points on {MODALITY_TITLES[target_graph(report)]}.",
        "",
        "| split | graph | precision | wF1 | mF1 | mF1 drop | label agreement | max abs diff | clips |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split_name, per_modality in report.items():
        for modality, per_precision in per_modality.items():
            for precision, r in per_precision.items():
                lines.append(
                    f"| {split_name} | {MODALITY_TITLES[modality]} | {precision} | {r['wF1']:.1f} | {r['mF1']:.1f} | "
                    f"{r['mF1_drop']:+.2f} | {100 * r['label_agreement']:.1f}% | {r['max_abs_diff']:.3f} | "
                    f"{r['clips']} |"
                )
    if latency:
        lines += [
            "",
            f"CPU latency, {MODALITY_TITLES[latency['graph']]} graph, batch 1, {latency['seconds']:g}-s clip, "
            f"{latency['threads']} threads "
            f"({latency['rounds']} interleaved rounds of {latency['iters']}):",
            "",
            "| graph | p50 ms | p90 ms | speed-up vs fp32 (p50) |",
            "|---|---|---|---|",
        ]
        base = latency["results"]["fp32"]["p50"]
        for name, r in latency["results"].items():
            lines.append(f"| {name} | {r['p50']:.1f} | {r['p90']:.1f} | {base / r['p50']:.2f}x |")
    if search:
        lines += search_markdown(search)
    return "\n".join(lines) + "\n"


def search_markdown(search: dict[str, Any]) -> list[str]:
    """The mixed-precision search: budget, drop before/after, kept layers with their sensitivity, cost."""
    rho = search.get("proxy_vs_mF1_spearman")
    lines = [
        "",
        f"## Mixed precision (`--max-drop {search['max_drop']}`): "
        + ("budget met" if search["met"] else "**budget missed**"),
        "",
        f"Decision split {search['split']}, {MODALITY_TITLES[search['graph']]} graph: mF1 drop "
        f"{search['before']['drop']:+.2f} points with every layer int8, {search['after']['drop']:+.2f} after "
        f"keeping {len(search['kept'])} more layer(s) unquantized in all graphs "
        f"(mean |p - p_fp32| {search['before']['error']:.4f} -> {search['after']['error']:.4f}). "
        f"Still int8: {search['quantized_layers']} of {search['layers']} Conv/Gemm/MatMul layers "
        f"({100 * search['quantized_share']:.0f} %); weighted FLOPs left unquantized: "
        f"{100 * search['unquantized_flops_share']:.1f} % (at a {search['flops_seconds']:g}-s clip).",
        "",
        "Sensitivity = what leaving that layer alone unquantized gains against the fully int8 graph "
        "(mF1 points; mean |p - p_fp32|, the ranking proxy"
        + (f"; Spearman rank correlation with the mF1 gain over all layers {rho:.2f})." if rho is not None else ")."),
        "",
        "| kept layer | node | op | mF1 gain | error gain | FLOPs share |",
        "|---|---|---|---|---|---|",
    ]
    for r in search["kept"]:
        lines.append(
            f"| {r['layer']} | {r['node']} | {r['op']} | {r['mF1_gain']:+.2f} | {r['error_gain']:.4f} | "
            f"{100 * r['flops_share']:.1f} % |"
        )
    return lines
