"""Decoding media with PyAV: 16 kHz mono audio and frames sampled at a fixed rate by timestamp.

Both work on a whole file or on a segment ``[start, end)`` in seconds, so MOSEI
segments are cut from full-length videos without re-encoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from avemo.deps import require
from avemo.errors import AvemoError

TICK_TOLERANCE = 1e-4  # of a tick (33 us at 3 fps): far below any frame interval, far above float error


def _av():
    return require("av", "pip install 'avemo[runtime]'")


def open_media(path: Path) -> Any:
    """The PyAV container of a media file; a missing or unreadable file is an AvemoError naming it."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise AvemoError(f"{path}: file not found")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise AvemoError(f"{path}: cannot open media ({exc})") from None


def decode_audio(path: Path, sample_rate: int, start: float = 0.0, end: float | None = None) -> np.ndarray | None:
    """Mono float32 samples in [-1, 1] at ``sample_rate`` for ``[start, end)``; None if there is no audio stream.

    Any channel layout (stereo, 5.1) is down-mixed and any rate resampled by FFmpeg's resampler.
    """
    av = _av()
    with open_media(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        if start > 0 and stream.time_base is not None:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        try:
            for frame in container.decode(stream):
                if first_time is None:
                    first_time = float(frame.time) if frame.time is not None else 0.0
                if end is not None and frame.time is not None and frame.time >= end:
                    break
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except av.error.FFmpegError as exc:
            if not chunks:
                raise AvemoError(f"{path}: corrupt audio stream ({exc})") from None
            # A truncated file: keep what decoded.
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    offset = max(0, round((start - (first_time or 0.0)) * sample_rate))
    stop = None if end is None else offset + max(0, round((end - start) * sample_rate))
    return samples[offset:stop]


class TickSampler:
    """Takes the first frame at or after each tick ``start + k / fps``: exactly one frame per tick.

    Times that land a hair below a tick (1/15360, 1/90000 or 1001/30000 time bases) fill that
    tick, and only that one (``TICK_TOLERANCE``).
    """

    def __init__(self, fps: float, start: float = 0.0) -> None:
        self.step, self.start = 1.0 / fps, start
        self.tick = 0  # index of the next tick to fill

    def take(self, t: float) -> bool:
        position = (t - self.start) / self.step + TICK_TOLERANCE
        if position < self.tick:
            return False
        self.tick = int(np.floor(position)) + 1  # the ticks this frame covered are filled
        return True


def sample_frames(
    path: Path, fps: float, start: float = 0.0, end: float | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """RGB frames [H, W, 3] at ``fps`` by presentation time: the first frame at or after each tick.

    Correct for variable frame rate and for segments cut from the middle of a
    file; yields nothing when the file has no video stream.
    """
    av = _av()
    with open_media(path) as container:
        if not container.streams.video:
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > 0 and stream.time_base is not None:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        sampler = TickSampler(fps, start)
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else start + sampler.tick * sampler.step
                if end is not None and t >= end:
                    break
                if sampler.take(t):
                    yield t, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError:
            return  # a truncated or corrupt tail: keep the frames decoded so far


def media_duration(path: Path) -> float:
    """Duration in seconds (container's, else the longest stream's); 0.0 when unknown."""
    with open_media(path) as container:
        if container.duration:
            return container.duration / 1_000_000  # AV_TIME_BASE
        spans = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
        return max(spans, default=0.0)
