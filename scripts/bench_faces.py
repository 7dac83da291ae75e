"""Face precision and recall per detector on labelled clips made here, and where the time goes.

Each scene of ``avemo.runtime.media.scenes`` (a real face photo moving, scaling 60-320 px, turning up to
25 degrees and dimming to 35 %, over a flat, periodic or textured background, with a second smaller
face, or no face at all) is written as a 1280x720 H.264 clip; the true face boxes of every frame are
known from how it is drawn. Per detector and scene, over the 3-fps samples:

- detector alone: every sampled frame searched whole (at the model's detection side), every face
  the detector returns; "false / frame" counts those that overlap no true face (IoU < 0.3);
- pipeline: the tracker and the clip's face choice as ``avemo infer --faces largest`` runs them:
  recall (the main face tracked, IoU >= 0.5), false faces per frame, tracks seen, and the share of
  the crops the model gets whose face has IoU >= 0.5 with the true main face.

Times are CPU ms per sampled frame (process time: the machine may be shared), with the full
and window searches counted. ``--decode`` also times 3-fps decoding of the periodic clip with
every frame decoded vs the sampler's skipping of unneeded B-frames. ``--media FILE`` (repeatable)
instead runs the Recognizer's feature extraction on a file and gives each stage's CPU ms (median
of 3) and the chosen face: face search against decoding on any clip. ``--patterns N``: the face
over N random smooth backgrounds (``avemo.runtime.media.scenes.random_pattern``), 8 sampled frames each.

    .venv/bin/python scripts/bench_faces.py --decode 3 --json docs/bench/faces-precision.json
    .venv/bin/python -m avemo.runtime.media.scenes /tmp/hard720.mp4 periodic 10
    .venv/bin/python scripts/bench_faces.py --media /tmp/hard720.mp4
    .venv/bin/python scripts/bench_faces.py --scenes "" --patterns 60 --seed 1   # random backgrounds only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from avemo.config import FeatureConfig
from avemo.machine import describe
from avemo.runtime.faces import FacePipeline, features_for_detector
from avemo.runtime.faces.tracking import iou
from avemo.runtime.media.decode import TickSampler, sample_frames
from avemo.runtime.media.scenes import SCENES, Scene, random_pattern, write_clip

MATCH = 0.5  # IoU for a face to count as the true one
OVERLAP = 0.3  # below this IoU with every true face, a detection is a false face


def truth_at(truth: dict, t: float) -> list:
    return truth[round(t, 3)]


def detect_alone(pipeline: FacePipeline, rgb: np.ndarray) -> list:
    """Every face the detector returns for the whole frame at the model's detection side (no tracking)."""
    scale = min(1.0, pipeline.features.face_detect_side / max(rgb.shape[:2]))
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return [f.moved(0, 0, 1 / scale) for f in pipeline.detector.detect(small)]


def run(clip: Path, truth: dict, detector: str) -> dict:
    features = features_for_detector(FeatureConfig(), detector)
    pipeline = FacePipeline(features, "largest")
    collector = pipeline.clip()
    raw_false = found = with_face = false = 0
    cpu = raw_cpu = 0.0
    frames = list(sample_frames(clip, features.fps))
    for t, rgb in frames:
        boxes = truth_at(truth, t)
        start = time.process_time()
        raw = detect_alone(pipeline, rgb)
        raw_cpu += time.process_time() - start
        raw_false += sum(all(iou(f.box, b) < OVERLAP for b in boxes) for f in raw)
        start = time.process_time()
        collector.add(t, rgb)
        cpu += time.process_time() - start
        tracked = [face for face, _ in collector.frames[-1].values()]
        false += sum(all(iou(f.box, b) < OVERLAP for b in boxes) for f in tracked)
        if boxes:  # the main face first
            with_face += 1
            found += any(iou(f.box, boxes[0]) >= MATCH for f in tracked)
    chosen = collector.finish()
    good = [
        bool(truth_at(truth, t)) and iou(box, truth_at(truth, t)[0]) >= MATCH
        for t, box in zip(chosen.times, chosen.boxes, strict=True)
    ]
    n = len(frames)
    tracker = collector.tracker
    return {
        "detector": detector,
        "sampled": n,
        "with_face": with_face,
        "raw_false_per_frame": raw_false / n,
        "raw_ms": 1000 * raw_cpu / n,
        "recall": found / with_face if with_face else None,
        "false_per_frame": false / n,
        "tracks": chosen.face.get("faces_seen", 0),
        "crops": len(good),
        "crops_iou50": float(np.mean(good)) if good else None,
        "box": chosen.face.get("box"),
        "score": chosen.face.get("score"),
        "ms": 1000 * cpu / n,
        "full_searches": tracker.full_searches,
        "window_searches": tracker.window_searches,
    }


def random_backgrounds(count: int, seed: int, detector: str) -> dict:
    """The moving face over ``count`` random smooth patterns (8 sampled frames each, a fresh tracker
    per pattern): frames with a false face tracked, false faces of the detector alone, recall."""
    features = features_for_detector(FeatureConfig(), detector)
    pipeline = FacePipeline(features, "largest")
    rng, scene = np.random.default_rng(seed), Scene("plain", 20.0)
    frames = false_frames = raw_false = found = 0
    for _ in range(count):
        scene.background = random_pattern(rng)
        tracker = pipeline.tracker()
        first = int(rng.integers(0, 50))
        for k in range(first, first + 8):
            rgb, [truth] = scene.render(k / 3)
            raw_false += sum(iou(f.box, truth) < OVERLAP for f in detect_alone(pipeline, rgb))
            tracked = [face for _, face in tracker.update(rgb)]
            frames += 1
            false_frames += any(iou(f.box, truth) < OVERLAP for f in tracked)
            found += any(iou(f.box, truth) >= MATCH for f in tracked)
    return {
        "detector": detector,
        "patterns": count,
        "frames": frames,
        "frames_with_false_face": false_frames,
        "raw_false_per_frame": raw_false / frames,
        "recall": found / frames,
    }


def decode_every_frame(clip: Path, fps: float) -> int:
    """The sampler before: every frame decoded, the first at or after each tick converted to RGB."""
    sampler, taken = TickSampler(fps), 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if sampler.take(float(frame.time)):
                frame.to_ndarray(format="rgb24")
                taken += 1
    return taken


def time_decoding(clip: Path, repeats: int) -> dict:
    """CPU and wall ms of 3-fps decoding, interleaved: every frame vs the sampler (unneeded B-frames skipped)."""
    runs: dict[str, list[tuple[float, float]]] = {"every frame": [], "sampler": []}
    stats: dict[str, int] = {}
    for _ in range(repeats):
        for name in runs:
            wall, cpu = time.perf_counter(), time.process_time()
            if name == "sampler":
                count = sum(1 for _ in sample_frames(clip, 3.0, stats=stats))
            else:
                count = decode_every_frame(clip, 3.0)
            runs[name].append((1000 * (time.process_time() - cpu), 1000 * (time.perf_counter() - wall)))
    out = {
        name: {"cpu_ms": float(np.median([c for c, _ in v])), "wall_ms": float(np.median([w for _, w in v]))}
        for name, v in runs.items()
    }
    out.update(frames=count, **stats)
    return out


def profile_media(clip: Path, repeats: int = 3) -> dict:
    """CPU ms per stage of ``extract`` (the Recognizer's path, speaker mode, one ORT thread for YuNet)."""
    import contextlib

    from avemo.runtime.media.decode import extract as extraction

    @contextlib.contextmanager
    def cpu_stage(timings: dict | None, name: str):
        start = time.process_time()
        try:
            yield
        finally:
            if timings is not None:
                timings[name] = timings.get(name, 0.0) + 1000 * (time.process_time() - start)

    features = FeatureConfig()
    pipeline = FacePipeline(features, "speaker", threads=1)
    extraction.stage = cpu_stage  # the stages by CPU time, not wall time
    runs = []
    for _ in range(repeats):
        timings: dict[str, float] = {}
        got = extraction.extract(clip, features, pipeline, timings=timings)
        runs.append(timings)
    stages = {name: float(np.median([r[name] for r in runs])) for name in runs[0]}
    return {
        "media": str(clip),
        "cpu_ms": stages,
        "frames": got.frames_sampled,
        "with_face": got.frames_with_face,
        "face": got.face,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each clip (default 20)")
    parser.add_argument("--scenes", default=",".join(SCENES), help=f"comma-separated, of: {', '.join(SCENES)}")
    parser.add_argument("--detectors", default="yunet,haar")
    parser.add_argument("--decode", type=int, default=0, metavar="N", help="also time decoding, N interleaved runs")
    parser.add_argument("--patterns", type=int, default=0, metavar="N", help="also N random smooth backgrounds")
    parser.add_argument("--seed", type=int, default=0, help="of the random backgrounds")
    parser.add_argument("--media", type=Path, action="append", help="profile this file's stages instead")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.media:
        for clip in args.media:
            result = profile_media(clip)
            result["cpu_ms"] = {k: round(v, 1) for k, v in result["cpu_ms"].items()}
            print(json.dumps(result))
        return
    rows, decoding, detectors = [], None, args.detectors.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for scene in filter(None, args.scenes.split(",")):
            clip = Path(tmp) / f"{scene.replace(' ', '_')}.mp4"
            print(f"writing the {scene!r} clip ...", file=sys.stderr)
            truth = write_clip(clip, scene, args.seconds)
            for detector in detectors:
                rows.append({"scene": scene, **run(clip, truth, detector)})
                print(f"  {detector}: done", file=sys.stderr)
            if args.decode and scene == "periodic":
                decoding = time_decoding(clip, args.decode)
    machine = describe()
    print(f"Machine: {machine}\n")
    if rows:
        print(f"{args.seconds:.0f}-s 1280x720 H.264 clips, face 60-320 px, turned up to 25 deg, brightness x0.35-1.2\n")
        print(
            "| scene | detector | alone: false / frame | recall | false / frame | tracks | crops IoU >= 0.5 "
            "| chosen box | mean score | ms / frame (alone, pipeline) | full / window searches |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            recall = "-" if r["recall"] is None else f"{100 * r['recall']:.0f} %"
            crops = "-" if r["crops_iou50"] is None else f"{100 * r['crops_iou50']:.0f} % of {r['crops']}"
            box = "-" if r["box"] is None else "[" + ", ".join(f"{v:.0f}" for v in r["box"]) + "]"
            print(
                f"| {r['scene']} | {r['detector']} | {r['raw_false_per_frame']:.2f} | {recall} | "
                f"{r['false_per_frame']:.2f} | {r['tracks']} | {crops} | {box} | {r['score'] or '-'} | "
                f"{r['raw_ms']:.1f}, {r['ms']:.1f} | {r['full_searches']} / {r['window_searches']} |"
            )
    if decoding:
        print(f"\nDecoding the periodic clip at 3 fps ({decoding['frames']} frames taken), median of {args.decode}:")
        print(f"packets {decoding['packets']}, decoded by the sampler {decoding['decoded']}")
        for name in ("every frame", "sampler"):
            print(f"- {name}: {decoding[name]['cpu_ms']:.0f} ms CPU, {decoding[name]['wall_ms']:.0f} ms wall")
    patterns = [random_backgrounds(args.patterns, args.seed, d) for d in detectors] if args.patterns else []
    if patterns:
        print(f"\nThe face over {args.patterns} random smooth patterns (seed {args.seed}), 8 sampled frames each:")
        print("| detector | frames | alone: false / frame | frames with a false face tracked | recall |")
        print("|---|---|---|---|---|")
        for r in patterns:
            print(
                f"| {r['detector']} | {r['frames']} | {r['raw_false_per_frame']:.2f} | "
                f"{r['frames_with_false_face']} | {100 * r['recall']:.0f} % |"
            )
    if args.json:
        summary = {"machine": machine, "seconds": args.seconds, "rows": rows, "decoding": decoding}
        args.json.write_text(json.dumps({**summary, "patterns": patterns}, indent=2))


if __name__ == "__main__":
    main()
