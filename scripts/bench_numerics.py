#!/usr/bin/env python3
"""What checking fp16 honestly costs: each parity sample of a model's fp16 graphs in ONNX's reference evaluator
against the same sample in ONNX Runtime, in one run (ratios, not absolute times, carry across machines).

    python scripts/bench_numerics.py MODELS [--out bench.json]

Prints a Markdown table (graph x sample: batch, padded frames, reference s, ONNX Runtime ms, ratio) and the
total a `avemo verify` of the fp16 set spends in the reference evaluator.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from avemo.contract import AUDIO_FEATS, FACES, graph_file
from avemo.runtime.backends import open_onnx
from avemo.runtime.backends.parity import padding_invariance, parity_samples
from avemo.runtime.models.manifest import load_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("--precision-dir", default="fp16", help="graph set to time (default fp16)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args()
    manifest = load_manifest(args.models)
    samples = parity_samples(manifest.features, manifest.modalities, manifest.faces_dtype)
    rows = []
    print("| graph | sample | batch | padded frames (audio/faces) | reference s | ONNX Runtime ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for modality, inputs in samples.items():
        path = args.models / args.precision_dir / graph_file(modality)
        reference, ort = open_onnx(path, "reference"), open_onnx(path, "ort")
        for i, sample in enumerate(inputs):
            started = time.perf_counter()
            got = reference.infer(sample)
            ref_s = time.perf_counter() - started
            if i == len(inputs) - 1:  # the corner sample: its clips alone, as check_parity runs them
                started = time.perf_counter()
                padding_invariance(reference, sample, got)
                ref_s += time.perf_counter() - started
            ort.infer(sample)
            started = time.perf_counter()
            ort.infer(sample)
            ort_ms = 1e3 * (time.perf_counter() - started)
            frames = "/".join(str(sample[k].shape[1]) if k in sample else "-" for k in (AUDIO_FEATS, FACES))
            batch = len(next(iter(sample.values())))
            rows.append({"graph": modality, "sample": i, "batch": batch, "frames": frames, "reference_s": ref_s,
                         "ort_ms": ort_ms})  # fmt: skip
            print(f"| {modality.upper()} | {i} | {batch} | {frames} | {ref_s:.2f} | {ort_ms:.1f} | "
                  f"{1e3 * ref_s / ort_ms:.0f}x |")  # fmt: skip
    total = sum(r["reference_s"] for r in rows)
    print(f"\nreference evaluator, all samples of the {args.precision_dir} set: {total:.1f} s")
    if args.out:
        args.out.write_text(json.dumps({"models": str(args.models), "rows": rows, "total_s": total}, indent=1))


if __name__ == "__main__":
    main()
