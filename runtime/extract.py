"""From a media file (or a segment of one) to model features: the code training and serving share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avemo.config import FeatureConfig
from avemo.runtime.audio import fbank
from avemo.runtime.faces import FaceCropper
from avemo.runtime.media import decode_audio, sample_frames
from avemo.runtime.timing import stage

MIN_AUDIO_SECONDS = 0.05  # shorter than a few frames is treated as no audio


@dataclass
class MediaFeatures:
    fbank: np.ndarray | None  # [T, mel bins] log-Mel; None: no usable audio
    faces: list[np.ndarray]  # RGB crops [S, S, 3] uint8, in time order
    frames_sampled: int
    frames_without_face: int
    notes: list[str]  # what was dropped and why

    @property
    def has_audio(self) -> bool:
        return self.fbank is not None and len(self.fbank) > 0


def extract(
    video: Path | None,
    features: FeatureConfig,
    cropper: FaceCropper | None,
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
    crops, sampled = [], 0
    if video is not None and cropper is not None:
        near = None  # the face of the previous sampled frame: searched around first
        frames = iter(sample_frames(video, features.fps, start, end))
        while True:
            with stage(timings, "decode video (3 fps)"):
                item = next(frames, None)
            if item is None:
                break
            sampled += 1
            with stage(timings, "face detection + crop"):
                crop, near = cropper.track(item[1], near)
            if crop is not None:
                crops.append(crop)
        if sampled == 0:
            notes.append("no video frames")
        elif not crops:
            notes.append(f"no face in {sampled} frames")
    return MediaFeatures(feats, crops, sampled, sampled - len(crops), notes)
