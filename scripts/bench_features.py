"""Feature-extraction real-time factor and `avemo prepare` throughput on media made here.

Run from a checkout (it reuses the test media factory):

    .venv/bin/python scripts/bench_features.py --repeats 5 --videos 8

Prints a Markdown table and writes JSON (``--json``). RTF = processing time / media duration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from avemo.config import FeatureConfig
from avemo.machine import describe
from avemo.runtime.faces import FacePipeline
from avemo.runtime.faces.tracking import REDETECT_EVERY, FaceTracker
from avemo.runtime.media.audio import fbank
from avemo.runtime.media.decode import decode_audio, sample_frames
from avemo.runtime.media.extract import extract
from avemo.runtime.media.sample import write_media
from avemo.train.mosei import prepare
from avemo.train.synth import write_mosei_tree


def timed(fn, repeats: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--videos", type=int, default=8, help="videos in the prepare benchmark (3 segments each)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    features = FeatureConfig()
    faces = FacePipeline(features)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_media(Path(tmp) / "clip.mp4", seconds=args.seconds, fps=30, size=(640, 360))

        def audio() -> None:
            fbank(decode_audio(clip, features.sample_rate), features)

        def video(redetect_every: int) -> None:
            tracker = FaceTracker(faces.detector, features.face_detect_side, redetect_every)
            for _, frame in sample_frames(clip, features.fps):
                tracker.update(frame)

        for name, fn in (
            ("audio (decode + fbank)", audio),
            ("video (decode + 3 fps + detect with tracking)", lambda: video(REDETECT_EVERY)),
            ("video, every frame searched whole (no tracking)", lambda: video(1)),
            ("together (`extract`, with crops: what prepare and infer run)", lambda: extract(clip, features, faces)),
        ):
            times = timed(fn, args.repeats)
            rows[name] = {
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "rtf": statistics.median(times) / args.seconds,
            }
        videos = {
            f"v{i}": {
                "intervals": [[0.5, 3.5], [4.0, 7.0], [7.5, 9.5]],
                "emotions": [[1, 0, 0, 0, 0, 0]] * 3,
                "media": {"seconds": 10.0, "fps": 30, "size": (640, 360)},
            }
            for i in range(args.videos)
        }
        root, folds = write_mosei_tree(Path(tmp) / "mosei", videos, {"train": list(videos), "valid": [], "test": []})
        prepare_rows = {}
        for workers in (1, 2):
            start = time.perf_counter()
            prepare(root, Path(tmp) / f"cache{workers}", features, workers=workers, folds_path=folds, progress=False)
            seconds = time.perf_counter() - start
            prepare_rows[workers] = {
                "clips": 3 * args.videos,
                "seconds": seconds,
                "clips_per_s": 3 * args.videos / seconds,
            }
    machine = describe()
    print(f"Machine: {machine}\n")
    print(f"| {args.seconds:.0f}-s clip, 640x360 @ 30 fps | median s | min-max s | RTF |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | {r['rtf']:.4f} |")
    print("\n| avemo prepare | clips | seconds | clips/s |\n|---|---|---|---|")
    for workers, r in prepare_rows.items():
        print(f"| {workers} worker(s) | {r['clips']} | {r['seconds']:.1f} | {r['clips_per_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "extraction": rows, "prepare": prepare_rows}, indent=2))


if __name__ == "__main__":
    main()
