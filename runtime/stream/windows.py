"""Windows cut from one pass over a source, each exactly what decoding that window alone would give
(same samples, same 3-fps frames), except face tracking, which runs once across the whole stream.

Each window owns a 3-fps ``TickSampler`` starting at its own start, so it takes
the frames a per-window decode would take; a frame that any open window takes
is converted and searched for faces once, by one tracker for the stream. Raw
audio is kept from the earliest open window on; a window's filterbank is
computed from its own samples when it completes. Memory: at most one window
plus one hop of audio, and the face crops of the open windows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from avemo.config import FeatureConfig
from avemo.runtime.extract import MediaFeatures, audio_features, finish
from avemo.runtime.faces import ClipCollector, FacePipeline
from avemo.runtime.media import TickSampler
from avemo.runtime.stream.sources import AudioChunk, Event, SourceInfo, VideoFrame

MAX_SKEW = 10.0  # seconds one stream may lag the other before the lagging one counts as ended (a gap)


@dataclass
class Window:
    start: float
    end: float
    sampler: TickSampler
    collector: ClipCollector | None


class WindowCutter:
    """``feed(event)`` / ``close()`` yield ``(start, end, MediaFeatures)`` for each window, in order,
    as soon as the source has moved past its end (both streams) or ended."""

    def __init__(
        self,
        features: FeatureConfig,
        faces: FacePipeline | None,
        info: SourceInfo,
        starts: list[float],
        window: float,
    ) -> None:
        self.features, self.faces, self.info, self.window = features, faces, info, window
        self._starts = deque(float(s) for s in starts)  # windows not opened yet
        self._open: deque[Window] = deque()
        self._tracker = faces.tracker() if faces is not None and info.has_video else None
        self._samples = np.zeros(0, np.float32)
        self._samples_time: float | None = None  # stream time of self._samples[0]
        self._audio_time = -np.inf  # stream time the audio has reached
        self._video_time = -np.inf
        self.peak_buffered_samples = 0  # for tests and benchmarks: the audio buffer's high-water mark

    def feed(self, event: Event) -> Iterator[tuple[float, float, MediaFeatures]]:
        if isinstance(event, AudioChunk):
            self._add_audio(event)
        else:
            self._add_video(event)
        yield from self._complete(final=False)

    def close(self) -> Iterator[tuple[float, float, MediaFeatures]]:
        """The source ended: every remaining window is complete with what arrived."""
        self._open_until(np.inf)
        yield from self._complete(final=True)

    def _open_until(self, t: float) -> None:
        while self._starts and self._starts[0] <= t + self._tolerance:
            start = self._starts.popleft()
            collector = self.faces.clip() if self._tracker is not None and self.faces is not None else None
            self._open.append(Window(start, start + self.window, TickSampler(self.features.fps, start), collector))

    @property
    def _tolerance(self) -> float:
        return 1e-3 / self.features.fps  # a frame a hair before its window's first tick still opens it

    def _add_audio(self, chunk: AudioChunk) -> None:
        if self._samples_time is None:
            self._samples_time = chunk.time
        self._samples = np.concatenate([self._samples, chunk.samples])
        self._audio_time = chunk.time + len(chunk.samples) / self.features.sample_rate
        self._open_until(self._audio_time)
        keep_from = self._open[0].start if self._open else (self._starts[0] if self._starts else self._audio_time)
        drop = max(0, round((keep_from - self._samples_time) * self.features.sample_rate))
        if drop:
            self._samples, self._samples_time = (
                self._samples[drop:],
                self._samples_time + drop / self.features.sample_rate,
            )
        self.peak_buffered_samples = max(self.peak_buffered_samples, len(self._samples))

    def _add_video(self, frame: VideoFrame) -> None:
        t = frame.time
        self._video_time = max(self._video_time, t)
        self._open_until(t)
        takers = [w for w in self._open if t < w.end and w.sampler.take(t)]
        if not takers or self._tracker is None:
            return
        rgb = frame.rgb()
        found = self._tracker.update(rgb)
        for w in takers:
            if w.collector is not None:
                w.collector.add(t, rgb, found)

    def _window_samples(self, w: Window) -> np.ndarray | None:
        if not self.info.has_audio:
            return None
        if self._samples_time is None:
            return np.zeros(0, np.float32)
        rate = self.features.sample_rate
        offset = max(0, round((w.start - self._samples_time) * rate))
        return self._samples[offset : offset + round(self.window * rate)]

    def _complete(self, final: bool) -> Iterator[tuple[float, float, MediaFeatures]]:
        while self._open:
            w = self._open[0]
            audio_done = not self.info.has_audio or self._audio_time >= w.end or self._video_time >= w.end + MAX_SKEW
            video_done = not self.info.has_video or self._video_time >= w.end or self._audio_time >= w.end + MAX_SKEW
            if not final and not (audio_done and video_done):
                return
            self._open.popleft()
            samples = self._window_samples(w)
            feats, notes = audio_features(samples, self.features)
            if w.collector is None:
                yield w.start, w.end, MediaFeatures(feats, [], 0, notes)
            else:
                yield w.start, w.end, finish(feats, notes, w.collector, samples, w.start)
