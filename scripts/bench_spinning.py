"""ONNX Runtime's spin-waiting on vs off, interleaved in one process: graphs alone, and decoding beside them.

    .venv/bin/python scripts/bench_host.py --make-model /tmp/host-paper --preset paper
    .venv/bin/avemo sample /tmp/clip10.mp4 --seconds 10 --size 1280x720
    .venv/bin/python scripts/bench_spinning.py /tmp/host-paper/models --media /tmp/clip10.mp4 --repeats 3

"inference": the A+V graph on one clip of --seconds (what `avemo profile`, Triton's graph models, parity and
calibration run), one session per setting. "pipeline" (with --media): a Recognizer per setting on the file
(decode, faces, features, inference) and streaming it in --window windows every --hop s; spinning "on" there
is every session of the Recognizer (YuNet too) built as ``ort.SPINNING["pipeline"] = True`` would build
them. Each repeat interleaves the candidates in --rounds rounds (``interleaved_latency``); p50 and p90 ms per
repeat, so the spread between repeats shows how much a shared machine moves the numbers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from avemo.machine import describe
from avemo.runtime.backends import open_backend, ort
from avemo.runtime.backends.parity import sample_inputs
from avemo.runtime.models.manifest import load_manifest
from avemo.runtime.recognizer import Recognizer
from avemo.runtime.timing import interleaved_latency


@contextmanager
def pipeline_spinning(on: bool) -> Iterator[None]:
    """Sessions built inside take ``on`` for the "pipeline" workload (to measure the setting not chosen)."""
    saved = ort.SPINNING["pipeline"]
    ort.SPINNING["pipeline"] = on
    try:
        yield
    finally:
        ort.SPINNING["pipeline"] = saved


def report(title: str, calls: dict[str, Callable[[], object]], args: argparse.Namespace, iters: int) -> None:
    print(f"\n{title}\n\n| repeat | " + " | ".join(f"{n} p50 / p90 ms" for n in calls) + " | on vs off p50 |")
    print("|---|" + "---|" * (len(calls) + 1))
    for repeat in range(args.repeats):
        ms = interleaved_latency(calls, iters, warmup=2 if repeat == 0 else 1, rounds=args.rounds)
        p50 = {n: float(np.median(v)) for n, v in ms.items()}
        cells = [f"{p50[n]:.1f} / {np.percentile(v, 90):.1f}" for n, v in ms.items()]
        on, off = (p50[n] for n in calls if n.endswith("on")), (p50[n] for n in calls if n.endswith("off"))
        ratios = " ".join(f"{a / b:.2f}x" for a, b in zip(on, off, strict=True))
        print(f"| {repeat + 1} | " + " | ".join(cells) + f" | {ratios} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("--media", type=Path, help="a clip for the pipeline cases")
    parser.add_argument("--seconds", type=float, default=10.0, help="the inference case's clip length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=15, help="inference calls per candidate and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--hop", type=float, default=1.0)
    args = parser.parse_args()
    print(f"Machine: {describe()}; ONNX Runtime threads: {args.threads}; model: {args.models}")
    manifest = load_manifest(args.models)
    inputs = sample_inputs(manifest.features, "av", 1, args.seconds, seed=0)
    graphs = {
        w: open_backend(manifest, "av", "fp32", "ort", args.threads, workload=w) for w in ("inference", "pipeline")
    }
    calls = {
        "spinning on": lambda: graphs["inference"].infer(inputs),
        "spinning off": lambda: graphs["pipeline"].infer(inputs),
    }
    report(f"Inference alone: A+V, {args.seconds:g} s, batch 1", calls, args, args.iters)
    for graph in graphs.values():
        graph.close()
    if args.media is None:
        return
    recognizers = {}
    for on in (True, False):
        with pipeline_spinning(on):
            recognizers[on] = Recognizer(args.models, "fp32", args.threads)
    media, window, hop = args.media, args.window, args.hop
    calls = {f"file, spinning {'on' if on else 'off'}": lambda r=r: r.recognize(media) for on, r in recognizers.items()}
    report(f"Pipeline: `avemo infer {media.name}` (decode, faces, features, inference)", calls, args, 1)
    calls = {
        f"stream, spinning {'on' if on else 'off'}": lambda r=r: list(r.stream(media, window, hop))
        for on, r in recognizers.items()
    }
    report(f"Pipeline: streaming {media.name}, --window {window:g} --hop {hop:g}", calls, args, 1)


if __name__ == "__main__":
    main()
