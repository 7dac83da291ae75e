"""Peak RSS of `avemo infer FILE` (one pass, no --window) against the file's length.

    .venv/bin/python scripts/bench_long_media.py demo_out/models --minutes 1 10 60 120 --old-max 10

For each length, a low-bitrate AAC file (speech-like audio, made here) and one fresh process
per measurement: `avemo infer` (window by window, bounded), and for lengths up to --old-max the
whole-file decode it replaced (`Recognizer.prepare` + one result, the path before issue 23) as
the baseline of the same run. Prints a Markdown table of peak RSS (MB) and wall seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from avemo.machine import describe
from avemo.runtime.media.sample import write_long_audio

OLD = (
    "import sys; from avemo.runtime.recognizer import Recognizer; r = Recognizer(sys.argv[1], threads=1); "
    "clip, feats = r.prepare(sys.argv[2]); print(r._recognized(sys.argv[2], (None, None), clip, feats, 0.0).probs)"
)


def peak(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one child process; it must succeed."""
    t0 = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({status}): {' '.join(command)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60, 120])
    parser.add_argument("--old-max", type=float, default=10, help="Longest file (minutes) for the old path.")
    parser.add_argument("--media-dir", type=Path, default=Path(tempfile.gettempdir()) / "avemo-long-media")
    args = parser.parse_args()
    args.media_dir.mkdir(parents=True, exist_ok=True)
    avemo = str(Path(sys.executable).with_name("avemo"))
    print(describe())
    print("| minutes | file MB | avemo infer peak RSS MB | s | whole-file decode (before) peak RSS MB | s |")
    print("|---|---|---|---|---|---|")
    for minutes in args.minutes:
        media = args.media_dir / f"speech-{minutes:g}min.m4a"
        if not media.exists():
            write_long_audio(media, minutes * 60)
        new, new_s = peak([avemo, "infer", str(media), "--models", str(args.models), "--threads", "1"])
        old = ("-", "-")
        if minutes <= args.old_max:
            mb, s = peak([sys.executable, "-c", OLD, str(args.models), str(media)])
            old = (f"{mb:.0f}", f"{s:.1f}")
        size = media.stat().st_size / 1e6
        print(f"| {minutes:g} | {size:.1f} | {new:.0f} | {new_s:.1f} | {old[0]} | {old[1]} |", flush=True)


if __name__ == "__main__":
    main()
