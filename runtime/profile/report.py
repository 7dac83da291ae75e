"""profile.json, .csv, .md and .png: the result of `avemo profile` written for people and for programs."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import MODALITY_TITLES

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
            # Samples are stored rounded: a one-sample case's p10 may exceed its exact p50 by the rounding.
            lo = np.maximum(0.0, p50 - np.array([np.percentile(c["samples_ms"], 10) for c in line]))
            hi = np.maximum(0.0, np.array([c["p90_ms"] for c in line]) - p50)
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
