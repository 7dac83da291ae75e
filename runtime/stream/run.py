"""The windows of a source, ready for the model: a file decoded once, or a live source (reconnected on request).

Stream code only cuts: ``stream_windows`` yields each window's features and never runs the model; the
caller (``Recognizer.stream``) turns each window into a result, as sherpa-onnx splits a stream from its
recognizer.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avemo.config import FeatureConfig
from avemo.errors import AvemoError
from avemo.runtime.faces import FacePipeline
from avemo.runtime.media.extract import MediaFeatures
from avemo.runtime.stream.live import Stopped, is_live, open_live
from avemo.runtime.stream.sources import file_source
from avemo.runtime.stream.windows import WindowCutter


@dataclass
class Lag:
    """How a live window's result kept up with its source, measured when the result is ready."""

    latency_ms: float  # from the arrival of the data that completed the window to the result
    behind_s: float  # how far the source had gone past the window's end
    dropped_windows: int  # windows skipped so far because processing fell behind


@dataclass
class StreamWindow:
    """One window's features, ready for the model, as soon as the source has passed its end."""

    source: str
    start: float
    end: float
    features: MediaFeatures
    features_ms: float  # decoding and features since the previous window's result
    #: Live sources: call once the window's result is ready; it measures the lag and skips the windows
    #: that processing can no longer reach. None for a file.
    lag: Callable[[], Lag] | None = None


def stream_windows(
    features: FeatureConfig,
    faces: FacePipeline | None,
    source: Path | str,
    window: float,
    hop: float | None = None,
    video: bool = True,
    timeout: float = 10.0,
    max_seconds: float | None = None,
    stop: threading.Event | None = None,
    max_behind: float | None = None,
    reconnect: int = 0,
) -> Iterator[StreamWindow]:
    """Windows ``[s, s + window)`` every ``hop`` seconds (default: the window), decoded in one pass,
    each yielded as soon as it is complete, with the features of ``features`` and the face crops of
    ``faces`` (None: no faces; ``video`` False: video is not decoded).

    ``source``: a file, a network URL (udp://, rtp://, rtsp://, http(s)://, srt://, tcp://), an
    FFmpeg input ``FORMAT:INPUT`` (``lavfi:testsrc=...``, ``alsa:default``), a camera
    ``camera:SPEC`` (OpenCV: index, path or GStreamer pipeline) or ``camera:SPEC+alsa:default``.
    For a file, windows, samples and 3-fps frames are those of ``extract(media, s, s + window)``;
    face tracking runs across the whole file instead of restarting per window.

    A live source's windows start at its first packet and go on until it ends, ``max_seconds`` of
    stream time, or ``stop`` is set (then after the current window); nothing for ``timeout`` seconds
    is an error. Live windows carry ``lag`` (``Lag``: latency, how far behind, windows dropped): when
    processing falls more than ``max_behind`` seconds (default two windows) behind the source, the
    windows it cannot reach are skipped and counted. A network source that breaks or stalls is
    opened again up to ``reconnect`` times; windows go on after the break (those it cut are
    counted as dropped).
    """
    if window <= 0 or (hop is not None and hop <= 0):
        raise AvemoError("window and hop must be positive")
    step = hop or window
    if not is_live(str(source)):
        info, events = file_source(Path(source), features.sample_rate, video=video)
        # Starts go on while the data does: a file whose timestamps restart runs past its reported duration.
        starts = until((k * float(step) for k in itertools.count()), max_seconds, window)
        cutter = WindowCutter(features, faces, info, starts, window, max((info.duration or 0.0) - window, 0.0))
        yield from _windows(str(source), events, cutter, None, window, stop, max_behind)
        return
    offset, dropped = 0.0, 0  # stream time and windows lost before the current connection
    for attempt in range(reconnect + 1):
        try:
            reader = open_live(str(source), features.sample_rate, video=video, timeout=timeout, stop=stop)
        except Stopped:  # Ctrl-C while connecting: no windows, no error
            return
        except AvemoError:
            if attempt == reconnect:
                raise
            if (stop or threading.Event()).wait(1.0):
                return
            continue
        first = -(-offset // step) * step  # windows go on from the next hop after the break
        starts = (first + k * step for k in itertools.count())
        cutter = WindowCutter(features, faces, reader.info, until(starts, max_seconds, window), window)
        cutter.dropped = dropped
        events = (dataclasses.replace(e, time=e.time + offset) for e in reader.events())
        try:
            yield from _windows(str(source), events, cutter, reader, window, stop, max_behind, offset)
            return
        except AvemoError:
            if attempt == reconnect or (stop is not None and stop.is_set()):
                raise
            offset = max(cutter.reached, offset) + 1e-3
            dropped = cutter.dropped + cutter.open_windows  # the windows the break cut
        finally:
            reader.close()


def _windows(
    source: str,
    events: Iterable[Any],
    cutter: WindowCutter,
    reader: Any,
    window: float,
    stop: threading.Event | None,
    max_behind: float | None,
    offset: float = 0.0,
) -> Iterator[StreamWindow]:
    """Feed one connection's events to ``cutter``; a StreamWindow per completed window.
    ``reader``: the live reader (None for a file), for latency and the drop policy; ``offset``:
    the stream time this connection's clock starts at (after a reconnection)."""
    limit = max_behind if max_behind is not None else 2 * window
    clock = {"features": time.perf_counter(), "arrival": 0.0}

    def lag(end: float) -> Lag:
        latency_ms = round(1000 * (time.monotonic() - clock["arrival"]), 1)
        newest = reader.newest_time + offset  # the reader's clock starts at its own first packet
        behind_s = round(max(0.0, newest - end), 3)
        if behind_s > limit:
            cutter.drop_before(newest - window)
        return Lag(latency_ms, behind_s, cutter.dropped)

    def cut(start: float, end: float, feats: MediaFeatures) -> StreamWindow:
        ms = 1000 * (time.perf_counter() - clock["features"])  # decoding and features since the last window
        measure = (lambda: lag(end)) if reader is not None else None
        return StreamWindow(source, start, end, feats, ms, measure)

    for event in events:
        clock["arrival"] = event.arrival
        for start, end, feats in cutter.feed(event):
            yield cut(start, end, feats)
            clock["features"] = time.perf_counter()  # the window's result is out: features time again
            if stop is not None and stop.is_set():
                return
        if cutter.exhausted:  # --max-seconds: its last window is out
            return
        if stop is not None and stop.is_set():
            break
    # The source ended (a file's last windows may be short), or Ctrl-C between windows (whole ones only).
    for start, end, feats in cutter.close(whole_only=reader is not None or (stop is not None and stop.is_set())):
        yield cut(start, end, feats)
        clock["features"] = time.perf_counter()


def until(starts: Iterable[float], max_seconds: float | None, window: float = 0.0) -> Iterable[float]:
    """Window starts whose windows end by ``max_seconds`` (all of them when None)."""
    return starts if max_seconds is None else itertools.takewhile(lambda s: s + window <= max_seconds + 1e-6, starts)
