"""Face detectors compared on a hard clip made here: recall, localisation and time per sampled frame.

The clip (default 20 s, 1280x720, 30 fps) shows a real face photograph (scikit-image's astronaut)
that moves across the frame, scales (face 60-320 px high), turns in the image plane (up to
25 degrees) and dims (brightness x0.35-1.2); the true face box of every frame is known. Each
configuration runs the pipeline's own tracker (``FaceTracker``) over the 3-fps samples; "full
search every 1" is no tracking, every sampled frame searched whole.

    .venv/bin/python scripts/bench_faces.py --json docs/bench/faces.json

A sampled frame counts as found when the largest detected face's centre lies within half a face
side of the true centre. Times are per sampled frame, detection only (decoding is the same for all).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from avemo.machine import describe
from avemo.runtime.faces import open_detector
from avemo.runtime.faces.tracking import REDETECT_EVERY, FaceTracker
from avemo.runtime.media import sample_frames
from avemo.runtime.sample import face_photo

PHOTO = 512
FACE_IN_PHOTO = (190.0, 68.0, 150.0, 182.0)  # YuNet's box of the astronaut in face_photo(512), x y w h


def pose(t: float, seconds: float) -> tuple[float, float, float, float, float]:
    """(centre x, centre y, face height px, angle deg, brightness) of the face at time t."""
    u = t / seconds
    height = 60 + 260 * (0.5 - 0.5 * np.cos(2 * np.pi * 1.5 * u))
    return (
        640 + 420 * np.sin(2 * np.pi * u),
        360 + 160 * np.sin(2 * np.pi * 2 * u),
        height,
        25 * np.sin(2 * np.pi * 2.5 * u),
        0.35 + 0.85 * (0.5 + 0.5 * np.cos(2 * np.pi * 1.2 * u)),
    )


def render(t: float, seconds: float, photo: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 1280x720 frame and the true face (centre x, centre y, height)."""
    cx, cy, height, angle, light = pose(t, seconds)
    scale = height / FACE_IN_PHOTO[3]
    fx, fy = FACE_IN_PHOTO[0] + FACE_IN_PHOTO[2] / 2, FACE_IN_PHOTO[1] + FACE_IN_PHOTO[3] / 2
    matrix = cv2.getRotationMatrix2D((fx, fy), angle, scale)
    matrix[:, 2] += (cx - fx, cy - fy)  # the face centre lands on (cx, cy)
    frame = cv2.warpAffine(photo, matrix, (1280, 720), borderMode=cv2.BORDER_CONSTANT, borderValue=(70, 80, 90))
    return np.clip(frame.astype(np.float32) * light, 0, 255).astype(np.uint8), (cx, cy, height)


def write_clip(path: Path, seconds: float) -> dict[float, tuple[float, float, float]]:
    photo, truth = face_photo(PHOTO), {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for i in range(int(seconds * 30)):
            frame, truth[round(i / 30, 3)] = render(i / 30, seconds, photo)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return truth


def run(clip: Path, truth: dict, detector: str, side: int, redetect_every: int) -> dict:
    tracker = FaceTracker(open_detector(detector), side, redetect_every)
    found = sampled = 0
    seconds = 0.0
    for t, rgb in sample_frames(clip, 3.0):
        start = time.perf_counter()
        faces = tracker.update(rgb)
        seconds += time.perf_counter() - start
        sampled += 1
        cx, cy, height = truth[round(t, 3)]
        if faces:
            x, y, w, h = max((f for _, f in faces), key=lambda f: f.area).box
            found += np.hypot(x + w / 2 - cx, y + h / 2 - cy) < 0.5 * height
    return {
        "detector": detector,
        "detect_side": side,
        "full_search_every": redetect_every,
        "sampled": sampled,
        "found": int(found),
        "recall": found / sampled,
        "ms_per_frame": 1000 * seconds / sampled,
        "full_searches": tracker.full_searches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    configs = [
        ("haar", 480, REDETECT_EVERY),
        ("haar", 480, 1),
        ("yunet", 320, REDETECT_EVERY),
        ("yunet", 480, REDETECT_EVERY),
        ("yunet", 640, REDETECT_EVERY),
        ("yunet", 640, 3),
        ("yunet", 640, 1),
        ("yunet", 960, REDETECT_EVERY),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "hard.mp4"
        truth = write_clip(clip, args.seconds)
        rows = [run(clip, truth, *config) for config in configs]
    machine = describe()
    print(f"Machine: {machine}\n")
    print(f"{args.seconds:.0f}-s 1280x720 clip, face 60-320 px, turned up to 25 deg, brightness x0.35-1.2\n")
    print("| detector | detection side | full search every | frames with the face | ms per frame | full searches |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['detector']} | {r['detect_side']} | {r['full_search_every']} | "
            f"{r['found']}/{r['sampled']} ({100 * r['recall']:.0f} %) | {r['ms_per_frame']:.1f} | "
            f"{r['full_searches']} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "seconds": args.seconds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
