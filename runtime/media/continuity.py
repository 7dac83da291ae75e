"""Stream times made continuous across restarts, as live systems do (FFmpeg's timestamp offsets).

Two recordings joined, a camera reboot, an encoder restart or MPEG-TS's 33-bit wrap send a
stream's timestamps back to a new base; in formats that allow discontinuities (MPEG-TS) they may
jump forward by hours too. Left as they are, everything after such a restart lands on times the
windows have already passed and is lost. ``Continuity`` starts a new timeline segment instead: the
packets of each stream are moved by the segment's offset so that the new segment continues where
the stream's media had got to, and the decoders never see time go back. Both streams of one
restart share its offset, so audio and video stay in step within the new recording.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

#: Decode order (dts) never goes back within a recording: a step back beyond jitter is a restart.
BACK_SECONDS = 0.5
#: Forward jumps of the whole source beyond this, in formats that declare discontinuities, are restarts
#: (FFmpeg's own ``dts_delta_threshold``); elsewhere, or in one stream only, a forward jump is a real gap.
JUMP_SECONDS = 10.0
TS_DISCONT = 0x0200  # AVFMT_TS_DISCONT: the format allows timestamp discontinuities (MPEG-TS)


@dataclass
class Restart:
    """The source's timestamps restarted: from ``time`` (stream seconds) on, a new timeline segment.

    ``Continuity`` gives one per stream that enters the segment (``kind``: "audio" or "video"; the
    decoder re-times that stream from there), ``new`` for the first, which the output announces."""

    time: float
    arrival: float = 0.0  # live sources: time.monotonic() when the packet that showed it was read
    kind: str = ""
    new: bool = True

    def note(self) -> str:
        return (
            f"the stream's timestamps restarted or jumped at {self.time:.2f} s (joined recordings, or a camera "
            "or encoder restart): its media goes on from there on one timeline"
        )


class Continuity:
    """``place(packet)`` moves a demuxed packet onto one continuous timeline (in place); returns a
    ``Restart`` where the packet's stream enters a new segment."""

    def __init__(self, container: Any) -> None:
        self.jumps = bool(getattr(container.format, "flags", 0) & TS_DISCONT)
        self.offsets: list[float] = [0.0]  # seconds added to the times of each segment, in order
        self.segment: dict[int, int] = {}  # stream index -> the segment its packets are in
        self.last: dict[int, float] = {}  # stream index -> placed decode time of its latest packet
        self.prior: dict[int, float] = {}  # ... and of the one before: tells one bad timestamp from a restart
        self.step: dict[int, float] = {}  # its latest step between packets: the length of one without a duration
        self.ends: dict[int, float] = {}  # placed time where its media read so far ends

    @property
    def end(self) -> float:
        return max(self.ends.values(), default=0.0)

    def place(self, packet: Any) -> Restart | None:
        key, base = packet.stream.index, packet.time_base
        if packet.dts is None or base is None:  # pts alone is reordered: no evidence; moved with its segment
            self._shift(packet, self.segment.get(key, 0))
            return None
        raw = float(packet.dts * base)
        k = self.segment.get(key, 0)
        t, last, restart = raw + self.offsets[k], self.last.get(key), None
        if last is not None and self._jumped(key, t, last):
            segments = len(self.offsets)
            k = self.segment[key] = self._segment_for(key, raw, last)
            t = raw + self.offsets[k]
            restart = Restart(t, kind=packet.stream.type, new=len(self.offsets) > segments)
        self._shift(packet, k)
        if last is not None and 0 < t - last <= 2 * BACK_SECONDS:
            self.step[key] = t - last
        self.prior[key], self.last[key] = last if last is not None else t, t
        self.ends[key] = t + (float(packet.duration * base) if packet.duration else self.step.get(key, 0.0))
        return restart

    def _jumped(self, key: int, t: float, last: float) -> bool:
        if t < last - BACK_SECONDS:  # decode time went back: a restart, unless the latest packet was the odd one
            return not self.prior[key] - BACK_SECONDS <= t <= last
        return self.jumps and t > self.end + JUMP_SECONDS  # the whole source jumped forward, not one stream's gap

    def _segment_for(self, key: int, raw: float, last: float) -> int:
        """The newest segment when it places the packet where the media has got to (another stream began it),
        else a new one that continues from there."""
        newest = len(self.offsets) - 1
        t = raw + self.offsets[newest]
        if newest > self.segment.get(key, 0) and max(last, self.end) - 2 * BACK_SECONDS <= t <= self.end + JUMP_SECONDS:
            return newest
        self.offsets.append(self.end - raw)
        return newest + 1

    def _shift(self, packet: Any, k: int) -> None:
        shift = round(self.offsets[k] / packet.time_base) if packet.time_base is not None else 0
        if shift:
            packet.dts = packet.dts + shift if packet.dts is not None else None
            packet.pts = packet.pts + shift if packet.pts is not None else None


def continuous(packets: Iterable[Any], container: Any) -> Iterator[Any]:
    """``container``'s demuxed ``packets`` on one continuous timeline, each restart announced (a
    ``Restart``) before the packet that shows it."""
    continuity = Continuity(container)
    for packet in packets:
        restart = continuity.place(packet)
        if restart is not None:
            yield restart
        yield packet
