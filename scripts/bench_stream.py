"""Windows in one pass vs a single pass over the same file, interleaved, in one process.

    .venv/bin/avemo sample /tmp/clip60.mp4 --seconds 60 --size 1280x720
    .venv/bin/python scripts/bench_stream.py demo_out/models /tmp/clip60.mp4 --rounds 5

Prints the median seconds of `Recognizer.recognize(file)` (one pass, one result) and of
`Recognizer.stream(file, window, hop)` for each --hop, and their ratio (the model is loaded once;
process start-up is not included).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from avemo.machine import describe
from avemo.runtime.recognizer import Recognizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("media", type=Path)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--hop", type=float, nargs="+", default=[2.5, 1.0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    recognizer = Recognizer(args.models)
    cases = {"single pass": lambda: recognizer.recognize(args.media)}
    for hop in args.hop:
        cases[f"--window {args.window:g} --hop {hop:g}"] = lambda hop=hop: list(
            recognizer.stream(args.media, args.window, hop)
        )
    for run in cases.values():  # warm-up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved, so drift hits every case alike
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["single pass"])
    print(f"Machine: {describe()}\n\n| {args.media.name} | median s | min-max s | vs single pass |\n|---|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f}-{max(values):.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
