"""Live sources: network streams and FFmpeg inputs (lavfi, alsa, ...) read by a thread.

A reader thread demuxes packets as they arrive and stamps each with its
arrival time, so nothing waits on the model: packets that arrive while a
window is being recognised queue up (compressed, small) and are decoded by the
consumer. A source that sends nothing for ``timeout`` seconds, or breaks, ends
with an AvemoError that says which; ``close()`` stops the reader.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from avemo.deps import require
from avemo.errors import AvemoError
from avemo.runtime.media.continuity import Restart, continuous
from avemo.runtime.media.decode import Event, decode_packets
from avemo.runtime.stream.devices import CameraSource, MergedSource
from avemo.runtime.stream.readers import END, POLL, queued, stop_reader
from avemo.runtime.stream.sources import SourceInfo, select_streams

#: URL schemes read as network streams (what FFmpeg's protocols in PyAV's wheel open).
NETWORK_SCHEMES = ("udp", "rtp", "rtsp", "rtmp", "http", "https", "srt", "tcp")
#: ``FORMAT:INPUT`` for FFmpeg's own inputs, e.g. ``lavfi:testsrc=size=640x360:rate=30``.
INPUT_FORMATS = ("lavfi", "alsa", "pulse", "v4l2")
QUEUE_PACKETS = 20000  # at most a minute or two of 720p packets waiting (compressed: tens of MB)


OPENER, READER = "avemo-open", "avemo-reader"  # names of the threads that open and read live sources


def in_ffmpeg() -> bool:
    """Whether a thread that Ctrl-C left behind is still inside FFmpeg (opening or reading a silent source:
    it cannot be interrupted); the interpreter must not be finalised under it."""
    return any(t.name.startswith((OPENER, READER)) and t.is_alive() for t in threading.enumerate())


class Stopped(Exception):
    """The stop event was set while a source was still opening."""


def interruptible(opening: Any, stop: threading.Event | None) -> Any:
    """``opening()`` (a blocking open) in a thread, so that ``stop`` (set by a signal handler, which runs only
    between bytecodes of this thread) ends the wait within ``POLL`` s with ``Stopped``. An open that completes
    after that is closed by its thread."""
    if stop is None:
        return opening()
    box: dict[str, Any] = {}
    abandoned = threading.Event()

    def run() -> None:
        try:
            box["result"] = opening()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc
        if abandoned.is_set() and "result" in box:
            box["result"].close()

    thread = threading.Thread(target=run, name=OPENER, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL)
        if stop.is_set() and thread.is_alive():
            abandoned.set()
            raise Stopped
    if "error" in box:
        raise box["error"]
    return box["result"]


def is_live(spec: str) -> bool:
    """A network URL, ``FORMAT:INPUT``, ``camera:SPEC`` or ``camera:SPEC+FORMAT:INPUT``; else a file path."""
    if "://" in spec:
        return spec.split("://", 1)[0].lower() in NETWORK_SCHEMES
    return ":" in spec and spec.split(":", 1)[0] in (*INPUT_FORMATS, "camera")


def open_live(
    spec: str, sample_rate: int, video: bool = True, timeout: float = 10.0, stop: threading.Event | None = None
) -> Any:
    """The reader for a live ``spec`` (see ``is_live``): it has ``info``, ``events()``, ``newest_time``, ``close()``.
    ``stop`` set (Ctrl-C): its events end within ``POLL`` seconds; set while it opens, ``Stopped`` is raised."""
    if spec.startswith("camera:"):
        camera_spec, _, audio_spec = spec[len("camera:") :].partition("+")
        camera = CameraSource(camera_spec, timeout, stop=stop)
        if not audio_spec:
            return camera
        try:
            audio = LiveSource(audio_spec, sample_rate, video=False, timeout=timeout, stop=stop)
            return MergedSource(camera, audio, timeout, stop)
        except (AvemoError, Stopped):
            camera.close()
            raise
    return LiveSource(spec, sample_rate, video, timeout, stop)


class LiveSource:
    """Opens ``spec`` and starts reading it; ``events()`` yields decoded events with stream times from 0."""

    def __init__(
        self,
        spec: str,
        sample_rate: int,
        video: bool = True,
        timeout: float = 10.0,
        stop: threading.Event | None = None,
    ) -> None:
        av = require("av", "pip install 'avemo[runtime]'")
        self.spec, self.sample_rate, self.timeout, self.interrupt = spec, sample_rate, timeout, stop
        fmt, url = (None, spec) if "://" in spec else spec.split(":", 1)
        # Probe one second of a network stream, not FFmpeg's default five: the timeout covers the probe too.
        options = {"analyzeduration": "1000000", "probesize": "1000000"} if "://" in spec else {}
        if spec.startswith("rtsp://"):
            options["rtsp_transport"] = "tcp"
        if spec.startswith(("udp://", "rtp://")):
            options["fifo_size"] = "1000000"  # FFmpeg's own receive buffer, in 188-byte packets
            options["overrun_nonfatal"] = "1"
        try:
            self._container = interruptible(lambda: av.open(url, format=fmt, options=options, timeout=timeout), stop)
        except (av.error.FFmpegError, OSError) as exc:
            raise AvemoError(f"{spec}: cannot open the stream ({exc})") from None
        self._streams = select_streams(self._container, video)
        has = {s.type for s in self._streams}
        if not has:
            self._container.close()
            raise AvemoError(f"{spec}: the stream has neither audio nor video")
        self.info = SourceInfo(spec, "audio" in has, "video" in has, None)
        self.newest_time = 0.0  # stream time (from the first packet) of the newest packet read
        self._origin: float | None = None
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_PACKETS)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"{READER} {spec}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # FFmpeg's filters (lavfi) produce as fast as they can: pace them at real time, like `ffmpeg -re`,
        # so that they behave as a live source. Network streams and devices pace themselves.
        pace = self.spec.startswith("lavfi:")
        started = time.monotonic()
        try:
            for packet in continuous(self._container.demux(*self._streams), self._container):
                if self._stop.is_set():
                    break
                if isinstance(packet, Restart):  # a new timeline segment: passed on for the output to say
                    self._queue.put((packet, time.monotonic()))
                    continue
                if packet.pts is not None and packet.time_base is not None:
                    t = float(packet.pts * packet.time_base)
                    if self._origin is None:
                        self._origin = t
                    self.newest_time = max(self.newest_time, t - self._origin)
                    if pace:
                        time.sleep(max(0.0, started + t - self._origin - time.monotonic()))
                self._queue.put((packet, time.monotonic()))
        except Exception as exc:  # a broken connection or corrupt data: said by the consumer
            self._queue.put(exc)
        self._queue.put(END)

    def events(self) -> Iterator[Event]:
        packets = queued(self._queue, self.timeout, self.spec, stop=self.interrupt)
        first = next(packets, None)
        if first is None:
            return
        origin = self._origin if self._origin is not None else 0.0
        yield from decode_packets(
            itertools.chain([first], packets), self.sample_rate, origin, live=True, name=self.spec
        )

    def close(self) -> None:
        # Ctrl-C: a reader blocked on a silent source is not waited for (its read may last the whole timeout).
        wait = POLL if self.interrupt is not None and self.interrupt.is_set() else self.timeout
        if stop_reader(self._stop, self._queue, self._reader, wait):
            self._container.close()  # not while the reader is still inside FFmpeg: closing under it would crash
