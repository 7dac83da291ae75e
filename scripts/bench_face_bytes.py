#!/usr/bin/env python3
"""Host cost of a batch's faces on the way to a graph: float faces (avemo before issue 28) against uint8 faces
(now), in one run. The clips are 30 s at 3 fps (90 crops of S x S, the paper's S = 128 by default).

    python scripts/bench_face_bytes.py [--clips 4] [--seconds 30] [--size 128] [--rounds 15]

Per pass (crops -> clip array -> checks -> padded batch -> checked inputs -> the page-locked staging copy):
the bytes it reads and writes, counted from the arrays themselves, and the median milliseconds of each
path (interleaved rounds). "before" is the old code, kept here as the baseline; "after" calls avemo's own
``Recognizer._clip_input``, ``batch_inputs`` and ``check_inputs``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from avemo.config import FeatureConfig
from avemo.contract import FACE_LENGTHS, FACES, FACES_DTYPE, input_specs
from avemo.runtime.backends.base import InputSpec, check_inputs, fixed_axes
from avemo.runtime.recognizer import Recognizer, batch_inputs

Passes = list[tuple[str, int, int]]  # (pass, bytes read, bytes written)


def _specs(size: int, dtype: str) -> tuple[InputSpec, ...]:
    specs = {s["name"]: s for s in input_specs("v", 240, size)}
    return (
        InputSpec(FACES, np.dtype(dtype), fixed_axes(specs[FACES]["shape"])),
        InputSpec(FACE_LENGTHS, np.dtype(np.int64), fixed_axes(specs[FACE_LENGTHS]["shape"])),
    )


def before(crops: list[list[np.ndarray]], staging: np.ndarray, passes: Passes) -> None:
    """The old host path: float faces / 255 per clip, a NaN scan, a float32 batch, staged."""
    clips = []
    for clip in crops:
        stacked = np.stack(clip)
        passes.append(("stack crops", stacked.nbytes, stacked.nbytes))
        floats = stacked.transpose(0, 3, 1, 2).astype(np.float32)
        passes.append(("to float32", stacked.nbytes, floats.nbytes))
        scaled = floats / 255.0
        passes.append(("/ 255", floats.nbytes, scaled.nbytes))
        finite = np.isfinite(scaled)
        assert finite.all()
        passes.append(("NaN check", scaled.nbytes + finite.nbytes, finite.nbytes))
        clips.append(scaled)
    lengths = np.array([len(c) for c in clips], np.int64)
    faces = np.zeros((len(clips), int(lengths.max()), *clips[0].shape[1:]), np.float32)
    for j, c in enumerate(clips):
        faces[j, : len(c)] = c
    passes.append(("padded batch", sum(c.nbytes for c in clips), faces.nbytes))
    _check_and_stage({FACES: faces, FACE_LENGTHS: lengths}, staging, passes, _specs(staging.shape[-1], "float32"))


def after(crops: list[list[np.ndarray]], staging: np.ndarray, passes: Passes) -> None:
    """avemo's host path now: uint8 crops stacked (a view transposes them), batched, staged."""
    size = staging.shape[-1]
    stub: Any = SimpleNamespace(features=FeatureConfig(face_size=size), _has=lambda m: False)
    clips = []
    for clip in crops:
        feats = SimpleNamespace(faces=clip, has_audio=False, fbank=None)
        made = Recognizer._clip_input(stub, feats)  # type: ignore[arg-type]
        passes.append(("stack crops", made.faces.nbytes, made.faces.nbytes))
        clips.append(made)
    batch = batch_inputs(clips, "v")
    passes.append(("padded batch", sum(c.faces.nbytes for c in clips), batch[FACES].nbytes))
    _check_and_stage(batch, staging, passes, _specs(size, FACES_DTYPE))


def _check_and_stage(batch: dict[str, np.ndarray], staging: np.ndarray, passes: Passes, specs: tuple) -> None:
    checked = check_inputs(batch, specs, "bench")[FACES]
    assert checked is batch[FACES]  # no copy: already the graph's dtype
    view = staging.reshape(-1)[: checked.size].reshape(checked.shape)
    np.copyto(view, checked)  # what the TensorRT path's page-locked staging does
    passes.append(("page-locked staging", checked.nbytes, checked.nbytes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = round(args.seconds * FeatureConfig().fps)
    crops = [[rng.integers(0, 256, (args.size, args.size, 3), np.uint8) for _ in range(frames)]] * args.clips
    shape = (args.clips, frames, 3, args.size, args.size)
    paths = {"before": (before, np.empty(shape, np.float32)), "after": (after, np.empty(shape, np.uint8))}
    times: dict[str, list[float]] = {name: [] for name in paths}
    counted: dict[str, Passes] = {}
    for _ in range(args.rounds):
        for name, (run, staging) in paths.items():
            passes: Passes = []
            started = time.perf_counter()
            run(crops, staging, passes)
            times[name].append(1000 * (time.perf_counter() - started))
            counted[name] = passes
    print(f"{args.clips} clips x {args.seconds:g} s ({frames} crops of {args.size} px): faces per call on the host\n")
    print("| path | passes | MB read | MB written | MB moved | faces tensor MB | ms (median) | ms (min-max) |")
    print("|---|---|---|---|---|---|---|---|")
    moved = {}
    for name, passes in counted.items():
        read, written = (sum(p[k] for p in passes) / 1e6 for k in (1, 2))
        moved[name] = read + written
        kinds = len({p[0] for p in passes})
        t = times[name]
        tensor = int(np.prod(shape)) * paths[name][1].itemsize / 1e6
        print(
            f"| {name} | {kinds} | {read:.1f} | {written:.1f} | {read + written:.1f} | {tensor:.1f} | "
            f"{statistics.median(t):.1f} | {min(t):.1f}-{max(t):.1f} |"
        )
    ratio = statistics.median(times["before"]) / statistics.median(times["after"])
    print(f"\nafter / before: {moved['after'] / moved['before']:.2f} of the bytes, {ratio:.1f}x faster (same run)")


if __name__ == "__main__":
    main()
