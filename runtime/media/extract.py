"""From a media file (or a segment of one) to model features: the code training and serving share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avemo.config import FeatureConfig
from avemo.runtime.faces import ClipCollector, FacePipeline
from avemo.runtime.media.audio import fbank
from avemo.runtime.media.decode import decode_audio, sample_frames
from avemo.runtime.timing import stage

MIN_AUDIO_SECONDS = 0.05  # shorter than a few frames is treated as no audio


@dataclass
class MediaFeatures:
    fbank: np.ndarray | None  # [T, mel bins] log-Mel; None: no usable audio
    faces: list[np.ndarray]  # RGB crops [S, S, 3] uint8, in time order
    frames_sampled: int
    notes: list[str]  # what was dropped and why
    face: dict[str, Any] = field(default_factory=dict)  # the chosen face: box, choice, confidence, faces_seen
    face_times: list[float] = field(default_factory=list)  # seconds from the clip's start, one per crop
    face_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # x y w h, one per crop

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
    with stage(timings, "decode audio"):
        samples = decode_audio(audio or video, features.sample_rate, start, end) if (audio or video) else None
    feats, notes = audio_features(samples, features, timings)
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
        return finish(feats, notes, collector, samples, start)


def audio_features(
    samples: np.ndarray | None,
    features: FeatureConfig,
    timings: dict[str, float] | None = None,
    frames: np.ndarray | None = None,
) -> tuple[np.ndarray | None, list[str]]:
    """The fbank of decoded samples (None for no or too little audio) and the note saying why.

    ``frames``: these samples' filterbank, already computed (a stream computes it once for all windows).
    """
    if samples is None:
        return None, ["no audio stream"]
    if len(samples) < MIN_AUDIO_SECONDS * features.sample_rate:
        return None, ["audio shorter than 50 ms"]
    if frames is not None:
        return frames, []
    with stage(timings, "audio features"):
        return fbank(samples, features), []


def finish(
    feats: np.ndarray | None, notes: list[str], collector: ClipCollector, samples: np.ndarray | None, start: float
) -> MediaFeatures:
    """A clip's (or window's) features once its frames are in: the chosen face's crops, and notes."""
    chosen = collector.finish(samples, start)
    notes = notes + collector.pipeline.notes
    if chosen.frames_sampled == 0:
        notes.append("no video frames")
    elif not chosen.crops:
        notes.append(f"no face in {chosen.frames_sampled} frames")
    elif chosen.face.get("choice", "").startswith("largest:"):
        notes.append(f"several faces, {chosen.face['choice']}")
    times = [t - start for t in chosen.times]
    return MediaFeatures(feats, chosen.crops, chosen.frames_sampled, notes, chosen.face, times, chosen.boxes)
