"""Sources of timestamped media: one demux pass over a file yields audio chunks and video frames."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avemo.runtime.media.continuity import TS_DISCONT, continuous
from avemo.runtime.media.decode import Event, container_duration, decode_packets, open_media


@dataclass
class SourceInfo:
    name: str
    has_audio: bool
    has_video: bool
    duration: float | None  # None: a live source of unknown length


def file_source(path: Path, sample_rate: int, video: bool = True) -> tuple[SourceInfo, Iterator[Event]]:
    """Audio (resampled to ``sample_rate`` mono, as ``decode_audio`` does) and every video frame
    (``video=False``: none decoded), in demux order, on one timeline (a ``Restart`` event where the
    file's timestamps restart). A corrupt or truncated tail ends the events (what decoded is kept)."""
    container = open_media(path)  # fails now on a missing or unreadable file; the events close it
    streams = select_streams(container, video)
    types = {s.type for s in streams}
    info = SourceInfo(str(path), "audio" in types, "video" in types, container_duration(container))
    return info, _file_events(container, streams, sample_rate, str(path))


def _file_events(container: Any, streams: list[Any], sample_rate: int, name: str) -> Iterator[Event]:
    # A transport clock (MPEG-TS: a capture starting at 600 s, 26 h, or just before the 33-bit wrap, which
    # FFmpeg makes negative) counts from the file's first timestamp, as a live source's from its first packet;
    # other formats' times are the media's own (an mp4 edit list's small negative start included).
    clock = getattr(container.format, "flags", 0) & TS_DISCONT and container.start_time is not None
    origin = container.start_time / 1_000_000 if clock else 0.0  # AV_TIME_BASE
    with container:
        packets = continuous(container.demux(*streams), container)  # restarting timestamps: one timeline
        yield from decode_packets(((packet, 0.0) for packet in packets), sample_rate, origin, name=name)


def select_streams(container: Any, video: bool) -> list[Any]:
    """The first audio stream and (``video``) the first video stream, the latter decoded with threads."""
    streams = [*container.streams.audio[:1], *(container.streams.video[:1] if video else [])]
    for s in streams:
        if s.type == "video":
            s.thread_type = "AUTO"
    return streams
