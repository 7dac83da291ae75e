"""Decoding media with PyAV: 16 kHz mono audio and frames sampled at a fixed rate by timestamp.

Both work on a whole file or on a segment ``[start, end)`` in seconds, so MOSEI
segments are cut from full-length videos without re-encoding.
"""

from __future__ import annotations

import bisect
import errno
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avemo.deps import require
from avemo.errors import AvemoError
from avemo.runtime.media.continuity import Restart

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


Event = AudioChunk | VideoFrame | Restart


def decode_packets(
    packets: Iterable[tuple[Any, float]], sample_rate: int, origin: float = 0.0, live: bool = False, name: str = ""
) -> Iterator[Event]:
    """Decode demuxed (packet, arrival time) pairs into events; times are stream times minus ``origin``.

    Audio is resampled to ``sample_rate`` mono (any layout down-mixed, any rate resampled by
    FFmpeg) and timed by its sample count from the first audio frame, and again from the first
    frame after a ``Restart`` of the audio (``continuity.continuous`` puts those in place of
    packets; the first of each restart is passed on as an event). In a file, media that does not
    decode from the start is an AvemoError naming ``name``, a packet that does not decode later
    is skipped (a cut recording before the next), and a demuxing error ends the events (what
    decoded is kept); in a live stream a packet that does not decode (lost datagrams) is skipped.
    """
    audio = _AudioClock(sample_rate, origin)
    decoded = False
    items = iter(packets)
    while True:
        try:
            packet, arrival = next(items)  # demuxing a truncated file can fail
        except StopIteration:
            break
        except _av().error.FFmpegError as exc:
            if live or decoded:
                break  # a truncated or corrupt tail: keep what decoded
            raise AvemoError(f"{name}: corrupt media ({exc})") from None
        if isinstance(packet, Restart):
            if packet.kind == "audio":
                yield from audio.restart()
            if packet.new:
                yield Restart(packet.time - origin, arrival)
            continue
        try:
            frames = packet.decode()
        except _av().error.FFmpegError as exc:
            if live or decoded:
                continue
            raise AvemoError(f"{name}: corrupt media ({exc})") from None
        for frame in frames:
            decoded = True
            if packet.stream.type == "video":
                if frame.time is not None:
                    yield VideoFrame(float(frame.time) - origin, frame, arrival)
                continue
            yield from audio.chunks(frame, arrival)
    yield from audio.restart()


class _AudioClock:
    """Audio resampled to mono at ``sample_rate``, timed by sample count from the first frame (of each
    segment)."""

    def __init__(self, sample_rate: int, origin: float) -> None:
        self.sample_rate, self.origin = sample_rate, origin
        self.resampler = _av().AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.first: float | None = None  # time of the segment's first audio frame: sample i at first + i / rate
        self.emitted = 0

    def chunks(self, frame: Any, arrival: float) -> Iterator[AudioChunk]:
        if self.first is None:
            self.first = (float(frame.time) if frame.time is not None else self.origin) - self.origin
        yield from self._out(self.resampler.resample(frame), arrival)

    def restart(self) -> Iterator[AudioChunk]:
        """The samples the resampler still holds; the next frame starts the count again."""
        if self.first is not None:
            yield from self._out(self.resampler.resample(None), 0.0)
            self.resampler = _av().AudioResampler(format="flt", layout="mono", rate=self.sample_rate)
        self.first, self.emitted = None, 0

    def _out(self, frames: list[Any], arrival: float) -> Iterator[AudioChunk]:
        for out in frames:
            samples = out.to_ndarray().reshape(-1).astype(np.float32)
            yield AudioChunk(self.first + self.emitted / self.sample_rate, samples, arrival)
            self.emitted += len(samples)


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

    def covers(self, before: float, t: float) -> bool:
        """Whether a tick lies in (before, t]: ``take`` takes the frame at ``t`` when the one before it
        (taken or not) was at ``before``."""
        return self._index(t) >= max(0, self._index(before) + 1)

    def _index(self, t: float) -> float:
        return np.floor((t - self.start) / self.step + TICK_TOLERANCE)

    def take(self, t: float) -> bool:
        index = self._index(t)
        if index < self.tick:
            return False
        self.tick = int(index) + 1  # the ticks this frame covered are filled
        return True


def sample_frames(
    path: Path, fps: float, start: float = 0.0, end: float | None = None, stats: dict[str, int] | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """RGB frames [H, W, 3] at ``fps`` by presentation time: the first frame at or after each tick.

    Correct for variable frame rate and for segments cut from the middle of a
    file; yields nothing when the file has no video stream. Frames that no tick
    takes and no other frame refers to are not decoded (``wanted_packets``): the
    frames taken are those of decoding every frame. ``stats`` (optional) counts
    ``packets`` and ``decoded`` (packets sent to the decoder).
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
        counts = stats if stats is not None else {}
        counts.update(packets=0, decoded=0)
        try:
            for packet in wanted_packets(container.demux(stream), stream, sampler, counts):
                for frame in packet.decode():
                    t = float(frame.time) if frame.time is not None else start + sampler.tick * sampler.step
                    if end is not None and t >= end:
                        return
                    if sampler.take(t):
                        yield t, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError:
            return  # a truncated or corrupt tail: keep the frames decoded so far


REORDER = 16  # packets of look-ahead: more than any encoder's reordering (x264: at most B-frames + 2)


def wanted_packets(packets: Iterable[Any], stream: Any, sampler: TickSampler, counts: dict[str, int]) -> Iterator[Any]:
    """The packets a tick sampler needs decoded: all but the non-reference frames no tick takes.

    A non-reference frame (H.264 ``nal_ref_idc`` 0, HEVC sub-layer non-reference; the B-frames of
    most camera and x264 streams) is what FFmpeg's ``skip_frame = "NONREF"`` drops, but dropping
    all of them moves a tick's frame up to a few frame intervals late. Here one is dropped only when
    ``sampler`` would not take it: a tick falls in (previous presentation time, its time] only for
    the frame it takes, and the previous time is known from the packets read so far and ``REORDER``
    ahead (decode order differs from presentation order by a few frames). The times known are a
    subset of all, so the previous time is never overestimated: more reordering than that costs
    decoding, never a frame. So ticks are matched exactly as when every frame is decoded (tested);
    intra-only and all-reference streams, other codecs and packets without times are decoded whole.
    """
    length = nal_length_size(stream)
    if length is None or stream.time_base is None:
        for packet in packets:
            counts["packets"] += 1
            counts["decoded"] += 1
            yield packet
        return
    ahead: deque[Any] = deque()
    times: list[float] = []  # presentation times seen so far (recent ones), sorted

    def release(packet: Any) -> Iterator[Any]:
        counts["packets"] += 1
        if packet.pts is not None and packet.size and _disposable(bytes(packet), length, stream.codec_context.name):
            t = float(packet.pts * stream.time_base)
            k = bisect.bisect_left(times, t)
            before = times[k - 1] if k else -np.inf
            if not sampler.covers(before, t):
                return
        counts["decoded"] += 1
        yield packet

    for packet in packets:
        if packet.pts is not None:
            bisect.insort(times, float(packet.pts * stream.time_base))
            del times[: -4 * REORDER]  # bounded memory; a time dropped here only costs decoding
        ahead.append(packet)
        if len(ahead) > REORDER:
            yield from release(ahead.popleft())
    while ahead:
        yield from release(ahead.popleft())


def nal_length_size(stream: Any) -> int | None:
    """Bytes of each NAL unit's length prefix in an H.264 / HEVC MP4-style stream, 0 for start codes
    (MPEG-TS, raw); None for other codecs (never skipped)."""
    name, extra = stream.codec_context.name, stream.codec_context.extradata or b""
    if name not in ("h264", "hevc"):
        return None
    if not extra or extra[:3] == b"\x00\x00\x01" or extra[:4] == b"\x00\x00\x00\x01":
        return 0  # Annex B: parameter sets in band, NAL units after start codes
    index = 4 if name == "h264" else 21  # avcC / hvcC: lengthSizeMinusOne in the low two bits
    return (extra[index] & 3) + 1 if len(extra) > index else None


def _nal_headers(data: bytes, length: int) -> Iterator[int]:
    """The first header byte of each NAL unit in a packet."""
    if length:
        offset = 0
        while offset + length < len(data):
            size = int.from_bytes(data[offset : offset + length], "big")
            yield data[offset + length]
            offset += length + size
        return
    offset = data.find(b"\x00\x00\x01")
    while 0 <= offset < len(data) - 3:
        yield data[offset + 3]
        offset = data.find(b"\x00\x00\x01", offset + 3)


def _disposable(data: bytes, length: int, codec: str) -> bool:
    """Whether no other frame refers to this packet's picture: every slice in it is non-reference."""
    slices = 0
    for header in _nal_headers(data, length):
        if codec == "h264":
            kind, reference = header & 31, header >> 5 & 3
            if 1 <= kind <= 5:  # coded slices
                slices += 1
                if reference or kind == 5:
                    return False
        else:
            kind = header >> 1 & 63
            if kind <= 31:  # VCL: types 0-14 even are sub-layer non-reference pictures
                slices += 1
                if kind > 14 or kind % 2:
                    return False
    return slices > 0


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
