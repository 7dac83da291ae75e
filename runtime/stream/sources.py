"""Sources of timestamped media: one demux pass over a file yields audio chunks and video frames."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avemo.deps import require
from avemo.runtime.media import media_duration, open_media


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


@dataclass
class SourceInfo:
    name: str
    has_audio: bool
    has_video: bool
    duration: float | None  # None: a live source of unknown length


Event = AudioChunk | VideoFrame


def file_source(path: Path, sample_rate: int, video: bool = True) -> tuple[SourceInfo, Iterator[Event]]:
    """Audio (resampled to ``sample_rate`` mono, as ``decode_audio`` does) and every video frame
    (``video=False``: none decoded), in demux order. A corrupt or truncated tail ends the events
    (what decoded is kept)."""
    with open_media(path) as container:  # fail now on a missing or unreadable file
        info = SourceInfo(str(path), bool(container.streams.audio), video and bool(container.streams.video), None)
    info.duration = media_duration(path)
    return info, _file_events(path, sample_rate, info.has_video)


def _file_events(path: Path, sample_rate: int, video: bool) -> Iterator[Event]:
    with open_media(path) as container:
        streams = select_streams(container, video)
        yield from decode_packets(((packet, 0.0) for packet in container.demux(*streams)), sample_rate)


def select_streams(container: Any, video: bool) -> list[Any]:
    """The first audio stream and (``video``) the first video stream, the latter decoded with threads."""
    streams = [*container.streams.audio[:1], *(container.streams.video[:1] if video else [])]
    for s in streams:
        if s.type == "video":
            s.thread_type = "AUTO"
    return streams


def decode_packets(
    packets: Iterable[tuple[Any, float]], sample_rate: int, origin: float = 0.0, live: bool = False
) -> Iterator[Event]:
    """Decode demuxed (packet, arrival time) pairs into events; times are stream times minus ``origin``.

    Audio is resampled to ``sample_rate`` mono and timed by its sample count from the first audio
    frame, as ``decode_audio`` does. In a file a corrupt or truncated tail ends the events (what
    decoded is kept); in a live stream a packet that does not decode (lost datagrams) is skipped."""
    av = require("av", "pip install 'avemo[runtime]'")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    first: float | None = None  # time of the first audio frame: sample i lies at first + i / rate
    emitted = 0
    for packet, arrival in packets:
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            if live:
                continue
            break  # a truncated or corrupt tail: keep what decoded
        for frame in frames:
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
