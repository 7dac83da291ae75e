"""Recognition over the windows of a source: a file decoded once, or a live source (reconnected on request)."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avemo.errors import AvemoError
from avemo.runtime.media.extract import MediaFeatures
from avemo.runtime.stream.live import Stopped, is_live, open_live
from avemo.runtime.stream.sources import file_source
from avemo.runtime.stream.windows import WindowCutter

if TYPE_CHECKING:
    from avemo.runtime.recognizer import Recognition, Recognizer


def stream_windows(
    recognizer: Recognizer,
    source: Path | str,
    window: float,
    hop: float | None = None,
    timeout: float = 10.0,
    max_seconds: float | None = None,
    stop: threading.Event | None = None,
    max_behind: float | None = None,
    reconnect: int = 0,
) -> Iterator[Recognition]:
    """Windows ``[s, s + window)`` every ``hop`` seconds (default: the window), decoded in one pass,
    each yielded as soon as it is complete.

    ``source``: a file, a network URL (udp://, rtp://, rtsp://, http(s)://, srt://, tcp://), an
    FFmpeg input ``FORMAT:INPUT`` (``lavfi:testsrc=...``, ``alsa:default``), a camera
    ``camera:SPEC`` (OpenCV: index, path or GStreamer pipeline) or ``camera:SPEC+alsa:default``.
    For a file, windows, samples and 3-fps frames are those of ``recognize(media, s, s + window)``;
    face tracking runs across the whole file instead of restarting per window.

    A live source's windows start at its first packet and go on until it ends, ``max_seconds`` of
    stream time, or ``stop`` is set (then after the current window); nothing for ``timeout`` seconds
    is an error. Live results carry ``latency_ms`` (from the arrival of the data that completed the
    window, both streams past its end, to the result), ``behind_s`` and ``dropped_windows``: when
    processing falls more than ``max_behind`` seconds (default two windows) behind the source, the
    windows it cannot reach are skipped and counted. A network source that breaks or stalls is
    opened again up to ``reconnect`` times; windows go on after the break (those it cut are
    counted as dropped).
    """
    if window <= 0 or (hop is not None and hop <= 0):
        raise AvemoError("window and hop must be positive")
    step = hop or window
    if not is_live(str(source)):
        info, events = file_source(Path(source), recognizer.features.sample_rate, video=recognizer.needs_video)
        starts = np.arange(0.0, max((info.duration or 0.0) - window, 0.0) + 1e-6, step).tolist()
        cutter = WindowCutter(recognizer.features, recognizer.faces, info, until(starts, max_seconds, window), window)
        yield from _windows(recognizer, str(source), events, cutter, None, window, stop, max_behind)
        return
    offset, dropped = 0.0, 0  # stream time and windows lost before the current connection
    for attempt in range(reconnect + 1):
        try:
            reader = open_live(
                str(source), recognizer.features.sample_rate, video=recognizer.needs_video, timeout=timeout, stop=stop
            )
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
        cutter = WindowCutter(
            recognizer.features, recognizer.faces, reader.info, until(starts, max_seconds, window), window
        )
        cutter.dropped = dropped
        events = (dataclasses.replace(e, time=e.time + offset) for e in reader.events())
        try:
            yield from _windows(recognizer, str(source), events, cutter, reader, window, stop, max_behind, offset)
            return
        except AvemoError:
            if attempt == reconnect or (stop is not None and stop.is_set()):
                raise
            offset = max(cutter.reached, offset) + 1e-3
            dropped = cutter.dropped + cutter.open_windows  # the windows the break cut
        finally:
            reader.close()


def _windows(
    recognizer: Recognizer,
    source: str,
    events: Iterable[Any],
    cutter: WindowCutter,
    reader: Any,
    window: float,
    stop: threading.Event | None,
    max_behind: float | None,
    offset: float = 0.0,
) -> Iterator[Recognition]:
    """Feed one connection's events to ``cutter``; a Recognition per completed window.
    ``reader``: the live reader (None for a file), for latency and the drop policy; ``offset``:
    the stream time this connection's clock starts at (after a reconnection)."""
    limit = max_behind if max_behind is not None else 2 * window
    clock = {"features": time.perf_counter(), "arrival": 0.0}

    def result_of(start: float, end: float, feats: MediaFeatures) -> Recognition:
        ms = 1000 * (time.perf_counter() - clock["features"])  # decoding and features since the last window
        result = recognizer.recognize_features(feats, source, (start, end), ms)
        if reader is not None:
            result.latency_ms = round(1000 * (time.monotonic() - clock["arrival"]), 1)
            newest = reader.newest_time + offset  # the reader's clock starts at its own first packet
            result.behind_s = round(max(0.0, newest - end), 3)
            if result.behind_s > limit:
                cutter.drop_before(newest - window)
            result.dropped_windows = cutter.dropped
        clock["features"] = time.perf_counter()
        return result

    for event in events:
        clock["arrival"] = event.arrival
        for start, end, feats in cutter.feed(event):
            yield result_of(start, end, feats)
            if stop is not None and stop.is_set():
                return
        if cutter.exhausted:  # --max-seconds: its last window is out
            return
        if stop is not None and stop.is_set():
            break
    # The source ended (a file's last windows may be short), or Ctrl-C between windows (whole ones only).
    for start, end, feats in cutter.close(whole_only=reader is not None or (stop is not None and stop.is_set())):
        yield result_of(start, end, feats)


def until(starts: Iterable[float], max_seconds: float | None, window: float = 0.0) -> Iterable[float]:
    """Window starts whose windows end by ``max_seconds`` (all of them when None)."""
    return starts if max_seconds is None else itertools.takewhile(lambda s: s + window <= max_seconds + 1e-6, starts)
