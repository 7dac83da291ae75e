"""Decoding media with PyAV: 16 kHz mono audio and frames sampled at a fixed rate by timestamp.

Both work on a whole file or on a segment ``[start, end)`` in seconds, so MOSEI
segments are cut from full-length videos without re-encoding.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
    try:
        kind = stat.S_IFMT(path.stat().st_mode)
    except OSError as exc:  # ENOENT, ENAMETOOLONG (a name over 255 bytes), EACCES on a parent...
        raise AvemoError(f"{path}: {'file not found' if exc.errno == errno.ENOENT else exc.strerror}") from None
    if kind != stat.S_IFREG:
        raise AvemoError(f"{path}: {'is a directory' if kind == stat.S_IFDIR else 'not a regular file'}, not media")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as exc:
        raise AvemoError(f"{path}: cannot open media ({exc})") from None


@dataclass
class AudioChunk:
    time: float  # stream time of samples[0], seconds
    samples: np.ndarray  # float32 mono at the requested rate
    arrival: float = 0.0  # live sources: time.monotonic() when its packet was read


@dataclass
class VideoFrame:
    time: float  # presentation time, seconds
    frame: Any  # the decoded av.VideoFrame: converted to RGB only when a window takes it
    arrival: float = 0.0  # live sources: time.monotonic() when its packet was read

    def rgb(self) -> np.ndarray:
        return self.frame.to_ndarray(format="rgb24")


Event = AudioChunk | VideoFrame


def decode_packets(
    packets: Iterable[tuple[Any, float]], sample_rate: int, origin: float = 0.0, live: bool = False, name: str = ""
) -> Iterator[Event]:
    """Decode demuxed (packet, arrival time) pairs into events; times are stream times minus ``origin``.

    Audio is resampled to ``sample_rate`` mono (any layout down-mixed, any rate resampled by
    FFmpeg) and timed by its sample count from the first audio frame. In a file, media that
    does not decode from the start is an AvemoError naming ``name``, and a corrupt or truncated
    tail ends the events (what decoded is kept); in a live stream a packet that does not decode
    (lost datagrams) is skipped.
    """
    av = _av()
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    first: float | None = None  # time of the first audio frame: sample i lies at first + i / rate
    emitted, decoded = 0, False
    items = iter(packets)
    while True:
        try:
            packet, arrival = next(items)  # demuxing a truncated file can fail too
            frames = packet.decode()
        except StopIteration:
            break
        except av.error.FFmpegError as exc:
            if live:
                continue
            if not decoded:
                raise AvemoError(f"{name}: corrupt media ({exc})") from None
            break  # a truncated or corrupt tail: keep what decoded
        for frame in frames:
            decoded = True
            if packet.stream.type == "video":
                if frame.time is not None:
                    yield VideoFrame(float(frame.time) - origin, frame, arrival)
                continue
            if first is None:
                first = (float(frame.time) if frame.time is not None else origin) - origin
            for out in resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1).astype(np.float32)
                yield AudioChunk(first + emitted / sample_rate, samples, arrival)
                emitted += len(samples)
    if first is not None:
        for out in resampler.resample(None):
            samples = out.to_ndarray().reshape(-1).astype(np.float32)
            yield AudioChunk(first + emitted / sample_rate, samples)
            emitted += len(samples)


def decode_audio(path: Path, sample_rate: int, start: float = 0.0, end: float | None = None) -> np.ndarray | None:
    """Mono float32 samples in [-1, 1] at ``sample_rate`` for ``[start, end)``; None if there is no audio stream.

    The same decoding as a stream's (``decode_packets``), from a seek to ``start``.
    """
    with open_media(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        if start > 0 and stream.time_base is not None:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        for chunk in decode_packets(((p, 0.0) for p in container.demux(stream)), sample_rate, name=str(path)):
            if first_time is None:
                first_time = chunk.time
            if end is not None and chunk.time >= end:
                break
            chunks.append(chunk.samples)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
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
        return container_duration(container)


def container_duration(container: Any) -> float:
    """Duration in seconds of an open container (its own, else the longest stream's); 0.0 when unknown."""
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    spans = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
    return max(spans, default=0.0)
