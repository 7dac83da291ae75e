"""From a media file (or a segment of one) to model features: the code training and serving share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avemo.config import FeatureConfig
from avemo.runtime.audio import fbank
from avemo.runtime.faces import FacePipeline
from avemo.runtime.media import decode_audio, sample_frames
from avemo.runtime.timing import stage

MIN_AUDIO_SECONDS = 0.05  # shorter than a few frames is treated as no audio


@dataclass
class MediaFeatures:
    fbank: np.ndarray | None  # [T, mel bins] log-Mel; None: no usable audio
    faces: list[np.ndarray]  # RGB crops [S, S, 3] uint8, in time order
    frames_sampled: int
    notes: list[str]  # what was dropped and why
    face: dict[str, Any] = field(default_factory=dict)  # the chosen face: box, choice, confidence, faces_seen

    @property
    def has_audio(self) -> bool:
        return self.fbank is not None and len(self.fbank) > 0

    @property
    def frames_with_face(self) -> int:
        return len(self.faces)


def extract(
    video: Path | None,
    features: FeatureConfig,
    faces: FacePipeline | None,
    start: float = 0.0,
    end: float | None = None,
    audio: Path | None = None,
    timings: dict[str, float] | None = None,
) -> MediaFeatures:
    """Audio fbank from ``audio`` (or the video's own track) and face crops at ``features.fps``.

    ``timings`` (optional) receives the milliseconds spent per stage (`avemo profile --media`).
    """
    notes: list[str] = []
    with stage(timings, "decode audio"):
        samples = decode_audio(audio or video, features.sample_rate, start, end) if (audio or video) else None
    feats = None
    if samples is None:
        notes.append("no audio stream")
    elif len(samples) < MIN_AUDIO_SECONDS * features.sample_rate:
        notes.append("audio shorter than 50 ms")
    else:
        with stage(timings, "audio features"):
            feats = fbank(samples, features)
    if video is None or faces is None:
        return MediaFeatures(feats, [], 0, notes)
    collector = faces.clip()
    frames = iter(sample_frames(video, features.fps, start, end))
    while True:
        with stage(timings, "decode video (3 fps)"):
            item = next(frames, None)
        if item is None:
            break
        with stage(timings, "face detection + crop"):
            collector.add(*item)
    with stage(timings, "face detection + crop"):
        chosen = collector.finish(samples, start)
    notes.extend(faces.notes)
    if chosen.frames_sampled == 0:
        notes.append("no video frames")
    elif not chosen.crops:
        notes.append(f"no face in {chosen.frames_sampled} frames")
    elif chosen.face.get("choice", "").startswith("largest:"):
        notes.append(f"several faces, {chosen.face['choice']}")
    return MediaFeatures(feats, chosen.crops, chosen.frames_sampled, notes, chosen.face)
