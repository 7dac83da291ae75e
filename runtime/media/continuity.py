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
#: Forward jumps beyond this, in formats that declare discontinuities, are restarts (FFmpeg's own
#: ``dts_delta_threshold``); elsewhere a forward jump is a real gap and kept.
JUMP_SECONDS = 10.0
TS_DISCONT = 0x0200  # AVFMT_TS_DISCONT: the format allows timestamp discontinuities (MPEG-TS)


@dataclass
class Restart:
    """The source's timestamps restarted: a new timeline segment begins at ``time`` (stream seconds)."""

    time: float
    arrival: float = 0.0  # live sources: time.monotonic() when the packet that showed it was read

    def note(self) -> str:
        return (
            f"the stream's timestamps restarted at {self.time:.2f} s (joined recordings, or a camera or "
            "encoder restart): a new timeline segment continues from there"
        )


class Continuity:
    """``place(packet)`` moves a demuxed packet onto one continuous timeline (in place); returns the
    ``Restart`` it begins, if it is the first packet of a new segment."""

    def __init__(self, container: Any) -> None:
        self.jumps = bool(getattr(container.format, "flags", 0) & TS_DISCONT)
        self.offsets: list[float] = [0.0]  # seconds added to the times of each segment, in order
        self.segment: dict[int, int] = {}  # stream index -> the segment its packets are in
        self.last: dict[int, float] = {}  # stream index -> placed decode time of its latest packet
        self.end = 0.0  # placed time where the media read so far ends

    def place(self, packet: Any) -> Restart | None:
        stamp = packet.dts if packet.dts is not None else packet.pts
        base = packet.time_base
        if stamp is None or base is None:
            return None
        key = packet.stream.index
        raw = float(stamp * base)
        k = self.segment.get(key, 0)
        t, last, restart = raw + self.offsets[k], self.last.get(key), None
        if last is not None and (t < last - BACK_SECONDS or (self.jumps and t > last + JUMP_SECONDS)):
            k = self.segment[key] = k + 1
            if k == len(self.offsets):  # the first stream to show this restart places the segment
                self.offsets.append(self.end - raw)
                restart = Restart(self.end)
            t = raw + self.offsets[k]
        shift = round(self.offsets[k] / base)
        if shift:
            packet.dts = packet.dts + shift if packet.dts is not None else None
            packet.pts = packet.pts + shift if packet.pts is not None else None
        self.last[key] = t
        self.end = max(self.end, t + float((packet.duration or 0) * base))
        return restart


def continuous(packets: Iterable[Any], container: Any) -> Iterator[Any]:
    """``container``'s demuxed ``packets`` on one continuous timeline, each restart announced (a
    ``Restart``) before the packet that shows it."""
    continuity = Continuity(container)
    for packet in packets:
        restart = continuity.place(packet)
        if restart is not None:
            yield restart
        yield packet
