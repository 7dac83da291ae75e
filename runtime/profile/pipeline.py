"""The media pipeline of one real file, stage by stage: decode, features, face detection, inference."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from avemo.runtime.timing import stage


def profile_pipeline(
    models: Path, media: Path, precision: str = "fp32", threads: int | None = None, repeats: int = 5
) -> dict[str, Any]:
    """Per-stage time for one real media file: decode, features, face detection, inference (ONNX Runtime)."""
    from avemo.runtime.media.decode import media_duration
    from avemo.runtime.recognizer import Recognizer, batch_inputs

    recognizer = Recognizer(models, precision, threads)
    stages: dict[str, list[float]] = {}
    totals: list[float] = []
    modality = ""
    for _ in range(repeats):
        timings: dict[str, float] = {}
        clip, _ = recognizer.prepare(media, timings=timings)  # the Recognizer's own path, stage by stage
        modality = recognizer.choose(len(clip.audio) > 0, len(clip.faces) > 0)
        with stage(timings, "inference"):
            recognizer.backends[modality].infer(batch_inputs([clip], modality))
        for name, ms in timings.items():
            stages.setdefault(name, []).append(ms)
        totals.append(sum(timings.values()))
    duration = media_duration(media)
    table = {name: float(np.median(v)) for name, v in stages.items()}
    return {
        "media": str(media),
        "duration_s": duration,
        "graph": modality,
        "precision": precision,
        "threads": threads or os.cpu_count(),
        "repeats": repeats,
        "stages_ms": table,
        "total_ms": float(np.median(totals)),
        "rtf": float(np.median(totals)) / 1000.0 / duration,
        "samples_ms": {k: [round(x, 3) for x in v] for k, v in stages.items()},
    }
