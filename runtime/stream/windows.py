"""Windows cut from one pass over a source, each exactly what decoding that window alone would give
(same samples, same 3-fps frames), except face tracking, which runs once across the whole stream.

Each window owns a 3-fps ``TickSampler`` starting at its own start, so it takes
the frames a per-window decode would take; a frame that any open window takes
is converted and searched for faces once, by one tracker for the stream. The
filterbank is computed once for the stream and each window's frames are cut
from it (a window not starting on a frame boundary computes its own); raw
audio is kept from the earliest open window on, for those and for the speaker
choice. Memory: about one window of audio and filterbank, and the face crops
of the open windows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from avemo.config import FeatureConfig
from avemo.runtime.faces import ClipCollector, FacePipeline
from avemo.runtime.media.audio import OnlineFbank, frame_count
from avemo.runtime.media.continuity import Restart
from avemo.runtime.media.decode import AudioChunk, Event, TickSampler, VideoFrame
from avemo.runtime.media.extract import MediaFeatures, audio_features, finish
from avemo.runtime.stream.sources import SourceInfo

MAX_SKEW = 10.0  # seconds one stream may lag the other before the lagging one counts as ended (a gap)


@dataclass
class Window:
    start: float
    end: float
    sampler: TickSampler
    collector: ClipCollector | None


class WindowCutter:
    """``feed(event)`` / ``close()`` yield ``(start, end, MediaFeatures)`` for each window, in order,
    as soon as the source has moved past its end (both streams) or ended. A window that spans a
    ``Restart`` of the source's timestamps says so in its notes.

    ``full_only_after`` (a file cut into ``--window`` windows): when the source ends, a window that
    starts after this many seconds (the container's duration less one window) or after the data's
    end less one window is dropped rather than handed out short, unless it is the first."""

    def __init__(
        self,
        features: FeatureConfig,
        faces: FacePipeline | None,
        info: SourceInfo,
        starts: Iterable[float],
        window: float,
        full_only_after: float | None = None,
    ) -> None:
        self.features, self.faces, self.info, self.window = features, faces, info, window
        self.full_only_after = full_only_after
        self.restarts: list[Restart] = []  # of the open windows' span and later
        self.restarted = False
        self.handed_out = 0
        self._starts = iter(starts)  # windows not opened yet: a list for a file, endless for a live source
        self._next_start: float | None = next(self._starts, None)
        self.dropped = 0  # windows skipped because processing fell behind a live source (drop_before)
        self._open: deque[Window] = deque()
        self._tracker = faces.tracker() if faces is not None and info.has_video else None
        self._audio_time = -np.inf  # stream time the audio has reached
        self._video_time = -np.inf
        # Raw samples from the earliest open window on (its filterbank edges, the speaker choice).
        self._samples = np.zeros(0, np.float32)
        self._samples_time: float | None = None  # stream time of self._samples[0]
        # The stream's filterbank, computed once for all windows: frame k starts k shifts after the first sample.
        self._first_audio: float | None = None
        self._fbank = OnlineFbank(features) if info.has_audio else None
        self._frames = np.zeros((0, features.num_mel_bins), np.float32)
        self._frames_first = 0  # stream frame index of self._frames[0]
        self._shift = round(features.sample_rate * features.frame_shift_ms / 1000)
        self.peak_buffered_samples = 0  # for tests and benchmarks: the audio buffer's high-water mark

    def feed(self, event: Event) -> Iterator[tuple[float, float, MediaFeatures]]:
        if isinstance(event, AudioChunk):
            self._add_audio(event)
        elif isinstance(event, Restart):
            self.restarts.append(event)
            self.restarted = True
        else:
            self._add_video(event)
        yield from self._complete(final=False)

    def close(self, whole_only: bool = False) -> Iterator[tuple[float, float, MediaFeatures]]:
        """The source ended: the remaining windows are complete with what arrived (a file's last
        windows may be short). ``whole_only`` (a live source stopped): windows that did not get
        to their end are dropped instead."""
        if self._fbank is not None:
            self._fbank.finish()
            self._frames = np.concatenate([self._frames, self._fbank.frames()])
        reached = max(self._audio_time, self._video_time)
        if whole_only:
            self._open = deque(w for w in self._open if w.end <= reached + 1e-6)
            self._next_start = None
        else:  # windows that start before the data's end (starts may go on for ever: a file's one pass)
            self._open_until(reached)
            if self.full_only_after is not None:  # after a restart the container's length says nothing
                last = max(0.0 if self.restarted else self.full_only_after, reached - self.window) + 1e-6
                self._open = deque(w for i, w in enumerate(self._open) if w.start <= last or i + self.handed_out == 0)
        yield from self._complete(final=True)

    @property
    def reached(self) -> float:
        """The stream time both streams (those the source has) have reached."""
        times = [
            t for t, has in ((self._audio_time, self.info.has_audio), (self._video_time, self.info.has_video)) if has
        ]
        return max(0.0, min(times)) if times else 0.0

    @property
    def open_windows(self) -> int:
        return len(self._open)

    @property
    def exhausted(self) -> bool:
        """Every window has been handed out (the starts were finite)."""
        return self._next_start is None and not self._open

    def drop_before(self, t: float) -> int:
        """Skip the open windows that end before ``t`` (processing fell behind a live source); returns how many."""
        kept = deque(w for w in self._open if w.end >= t)
        dropped = len(self._open) - len(kept)
        self._open, self.dropped = kept, self.dropped + dropped
        return dropped

    def _open_until(self, t: float) -> None:
        tolerance = 1e-3 / self.features.fps  # a frame a hair before a window's first tick opens it
        while self._next_start is not None and self._next_start <= t + tolerance:
            start, self._next_start = self._next_start, next(self._starts, None)
            collector = self.faces.clip() if self._tracker is not None and self.faces is not None else None
            self._open.append(Window(start, start + self.window, TickSampler(self.features.fps, start), collector))

    def _add_audio(self, chunk: AudioChunk) -> None:
        rate = self.features.sample_rate
        samples = chunk.samples
        if self._samples_time is None:
            self._samples_time = self._first_audio = chunk.time
        else:  # audio re-timed after a restart: silence fills a gap (a second at a time), an overlap is cut
            gap = round((chunk.time - self._audio_time) * rate)
            while gap > rate:
                self._add_audio(AudioChunk(self._audio_time, np.zeros(rate, np.float32)))
                gap -= rate
            samples = np.concatenate([np.zeros(gap, np.float32), samples]) if gap > 0 else samples[-gap:]
        self._samples = np.concatenate([self._samples, samples])
        if self._fbank is not None:
            self._fbank.accept(samples)
            self._frames = np.concatenate([self._frames, self._fbank.frames()])
        self._audio_time = max(self._audio_time, chunk.time + len(chunk.samples) / rate)
        self._open_until(self._audio_time)
        keep_from = (
            self._open[0].start
            if self._open
            else (self._next_start if self._next_start is not None else self._audio_time)
        )
        drop = max(0, round((keep_from - self._samples_time) * rate))
        if drop:
            self._samples = self._samples[drop:]
            self._samples_time += drop / rate
        first_needed = max(0, self._sample_index(keep_from) // self._shift)
        if first_needed > self._frames_first:
            self._frames = self._frames[first_needed - self._frames_first :]
            self._frames_first = first_needed
        self.peak_buffered_samples = max(self.peak_buffered_samples, len(self._samples))

    def _sample_index(self, t: float) -> int:
        """Index in the stream's audio of the sample at time ``t``."""
        return round((t - (self._first_audio or 0.0)) * self.features.sample_rate)

    def _add_video(self, frame: VideoFrame) -> None:
        t = frame.time
        self._video_time = max(self._video_time, t)
        self._open_until(t)
        takers = [w for w in self._open if t < w.end and w.sampler.take(t)]
        if not takers or self._tracker is None or self.faces is None:
            return
        rgb = frame.rgb()
        found = self._tracker.update(rgb)
        crops = self.faces.crops(rgb, found)
        for w in takers:
            if w.collector is not None:
                w.collector.add(t, rgb, found, crops)

    def _window_samples(self, w: Window) -> np.ndarray | None:
        if not self.info.has_audio:
            return None
        if self._samples_time is None:
            return np.zeros(0, np.float32)
        rate = self.features.sample_rate
        offset = max(0, round((w.start - self._samples_time) * rate))
        return self._samples[offset : offset + round(self.window * rate)]

    def _window_frames(self, w: Window, samples: np.ndarray) -> np.ndarray | None:
        """The window's filterbank cut from the stream's, or None where the window does not start on a
        frame boundary (then it is computed from its own samples) or its last frame is not ready yet.

        A window decoded alone mirrors samples at its edges; cut from the stream, its first and last
        two frames see the real neighbouring audio instead (docs/BENCHMARKS.md: how much that changes)."""
        index = self._sample_index(w.start)
        if self._first_audio is None or index < 0 or index % self._shift:
            return None
        first = index // self._shift - self._frames_first
        count = frame_count(len(samples), self.features)
        if first < 0 or first + count > len(self._frames):
            return None
        return self._frames[first : first + count]

    def _complete(self, final: bool) -> Iterator[tuple[float, float, MediaFeatures]]:
        while self._open:
            w = self._open[0]
            audio_done = not self.info.has_audio or self._audio_time >= w.end or self._video_time >= w.end + MAX_SKEW
            video_done = not self.info.has_video or self._video_time >= w.end or self._audio_time >= w.end + MAX_SKEW
            if not final and not (audio_done and video_done):
                return
            samples = self._window_samples(w)
            frames = self._window_frames(w, samples) if samples is not None else None
            if frames is None and not final and samples is not None and self._sample_index(w.start) % self._shift == 0:
                if self._audio_time < w.end + MAX_SKEW:
                    return  # its last filterbank frames need a few more milliseconds of audio
            self._open.popleft()
            feats, notes = audio_features(samples, self.features, frames=frames)
            self.handed_out += 1
            notes += [r.note() for r in self.restarts if w.start <= r.time < w.end]
            self.restarts = [r for r in self.restarts if r.time >= (self._open[0].start if self._open else w.end)]
            if w.collector is None:
                yield w.start, w.end, MediaFeatures(feats, [], 0, notes)
            else:
                yield w.start, w.end, finish(feats, notes, w.collector, samples, w.start)
