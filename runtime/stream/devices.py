"""Capture devices: a camera through OpenCV, and a camera plus a microphone aligned by capture time.

``camera:SPEC`` opens ``cv2.VideoCapture`` with SPEC an index (``camera:0``, a USB/V4L2 camera),
a device or file path, or a GStreamer pipeline ending in ``appsink`` (a Jetson CSI camera:
``camera:nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv !
video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink``, on one line;
OpenCV must be built with GStreamer, as JetPack's is). Frames are timed by ``time.monotonic()`` at
capture. ``VIDEO+AUDIO`` (``camera:0+alsa:default``) reads both at once: each device in its own
thread, both timed on the same monotonic clock from the moment capture starts.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from avemo.deps import require
from avemo.errors import AvemoError
from avemo.runtime.media.decode import AudioChunk, Event, VideoFrame
from avemo.runtime.stream.readers import END, queued, stop_reader
from avemo.runtime.stream.sources import SourceInfo


class BgrImage:
    """An OpenCV frame that converts itself like an av.VideoFrame (only when a window takes it)."""

    def __init__(self, bgr: np.ndarray) -> None:
        self.bgr = bgr

    def to_ndarray(self, format: str = "rgb24") -> np.ndarray:
        cv2 = require("cv2", "pip install 'avemo[runtime]'")
        return cv2.cvtColor(self.bgr, cv2.COLOR_BGR2RGB)


class CameraSource:
    """Reads a camera in a thread; ``events()`` yields its frames timed from ``origin`` (time.monotonic())."""

    def __init__(
        self, spec: str, timeout: float, origin: float | None = None, stop: threading.Event | None = None
    ) -> None:
        cv2 = require("cv2", "pip install 'avemo[runtime]'")
        self.spec, self.timeout, self.interrupt = spec, timeout, stop
        self.origin = time.monotonic() if origin is None else origin
        pipeline = "!" in spec
        target: Any = int(spec) if spec.isdigit() else spec
        self._capture = cv2.VideoCapture(target, cv2.CAP_GSTREAMER if pipeline else cv2.CAP_ANY)
        if not self._capture.isOpened():
            need = "OpenCV built with GStreamer" if pipeline else "a camera there"
            raise AvemoError(f"camera:{spec}: cannot open it (needs {need})")
        self.info = SourceInfo(f"camera:{spec}", False, True, None)
        self.newest_time = 0.0
        self._queue: queue.Queue[Any] = queue.Queue(256)  # raw frames: a few seconds at most
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"avemo-camera {spec}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            ok, bgr = self._capture.read()
            now = time.monotonic()
            if not ok:
                break
            self.newest_time = now - self.origin
            self._queue.put(VideoFrame(now - self.origin, BgrImage(bgr), now))
        self._queue.put(END)

    def events(self) -> Iterator[Event]:
        return queued(self._queue, self.timeout, self.info.name, stop=self.interrupt)

    def close(self) -> None:
        if stop_reader(self._stop, self._queue, self._thread, self.timeout):
            self._capture.release()


class MergedSource:
    """Two live sources read together (a camera and a microphone), each in its own thread, both on
    the capture clock: the audio's stream time is moved to when its first chunk arrived."""

    def __init__(self, video: Any, audio: Any, timeout: float, stop: threading.Event | None = None) -> None:
        self.video, self.audio, self.timeout, self.interrupt = video, audio, timeout, stop
        self.info = SourceInfo(f"{video.info.name}+{audio.info.name}", True, True, None)
        self.origin = getattr(video, "origin", time.monotonic())
        self._queue: queue.Queue[Any] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._pump, args=(video.events(), False), daemon=True),
            threading.Thread(target=self._pump, args=(audio.events(), True), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def newest_time(self) -> float:
        return min(self.video.newest_time, self.audio.newest_time)

    def _pump(self, events: Iterator[Event], shift_audio: bool) -> None:
        offset: float | None = None
        try:
            for event in events:
                if shift_audio and isinstance(event, AudioChunk) and offset is None:
                    offset = event.arrival - self.origin - event.time  # the microphone's first sample: its arrival
                if shift_audio and offset is not None:  # its samples and its restarts alike
                    event = dataclasses.replace(event, time=event.time + offset)
                self._queue.put(event)
        except AvemoError as exc:
            self._queue.put(exc)
        self._queue.put(END)

    def events(self) -> Iterator[Event]:
        # Until both devices have ended: the other one's windows go on after one stops.
        return queued(self._queue, self.timeout, self.info.name, ends=2, stop=self.interrupt)

    def close(self) -> None:
        self.video.close()
        self.audio.close()
