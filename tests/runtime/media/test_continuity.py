"""Timestamps that restart (recordings joined, a camera or encoder restart, a wrap): one continuous timeline,
a new segment said in the output, for files (`avemo infer`, `--window`) and packets as any source gives them.

The second half came from an outside review (probe6): MPEG-TS recordings joined byte for byte, some remuxed
with packets dropped or timestamps moved, and A/V marker clips (a white flash and a 1-kHz beep at the same
instant) to measure sync."""

import json
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.config import FeatureConfig
from avemo.runtime.media.continuity import TS_DISCONT, Continuity, Restart
from avemo.runtime.media.decode import AudioChunk, VideoFrame
from avemo.runtime.media.sample import write_media
from avemo.runtime.stream.run import stream_windows
from avemo.runtime.stream.sources import file_source

MS = Fraction(1, 1000)


def packet(stream, ms, duration=40):
    kind = SimpleNamespace(index=stream, type=("video", "audio")[stream])
    return SimpleNamespace(stream=kind, dts=ms, pts=ms, time_base=MS, duration=duration)


def placed(continuity, stream, ms, duration=40):
    p = packet(stream, ms, duration)
    restart = continuity.place(p)
    return p.pts, restart


def test_a_restart_continues_where_the_media_got_to_and_both_streams_share_its_offset():
    c = Continuity(SimpleNamespace(format=SimpleNamespace(flags=TS_DISCONT)))
    for ms in range(0, 8000, 40):  # stream 1 lags a little, as interleaving makes one stream do
        assert placed(c, 0, ms)[0] == ms and (ms > 7860 or placed(c, 1, ms + 20)[0] == ms + 20)  # untouched
    pts, restart = placed(c, 0, 1400)  # stream 0 starts again at 1.4 s
    assert restart == Restart(pytest.approx(8.0), kind="video", new=True) and pts == 8000  # where the media ended
    assert placed(c, 1, 7900) == (7900, None)  # a late packet of the old recording keeps its place
    pts, restart = placed(c, 1, 1420)  # the other stream joins the segment: same offset, in step
    assert pts == 8020 and restart == Restart(pytest.approx(8.02), kind="audio", new=False)
    assert placed(c, 0, 1440) == (8040, None)
    assert placed(c, 0, 1440 + 3_600_000)[1].time == pytest.approx(8.08)  # MPEG-TS: an hour forward too


def test_forward_gaps_are_kept_where_the_format_has_no_discontinuities_or_only_one_stream_jumps():
    c = Continuity(SimpleNamespace(format=SimpleNamespace(flags=0)))  # mp4: a long gap is a real gap
    for ms in [*range(0, 1000, 40), *range(60_000, 61_000, 40)]:
        assert placed(c, 0, ms) == (ms, None)
    assert placed(c, 0, 58_400) == (61_000, Restart(pytest.approx(61.0), kind="video"))  # back: in any format
    assert placed(c, 0, 58_500)[0] == 61_000 + 100  # jitter within a segment is not
    ts = Continuity(SimpleNamespace(format=SimpleNamespace(flags=TS_DISCONT)))
    for ms in range(0, 20_000, 40):
        assert placed(ts, 0, ms)[1] is None and (4000 < ms < 16_000 or placed(ts, 1, ms)[1] is None)  # a muted gap


def test_one_bad_timestamp_is_not_a_restart_and_a_packet_without_a_duration_lasts_its_step():
    c = Continuity(SimpleNamespace(format=SimpleNamespace(flags=TS_DISCONT)))
    for ms in range(0, 2000, 40):
        placed(c, 0, ms, duration=0)  # MPEG-TS video packets carry no duration
    assert placed(c, 0, 7000, duration=0) == (7000, None)  # a bit error: 5 s ahead
    assert placed(c, 0, 2000, duration=0) == (2000, None)  # and back: that one was the odd one out
    assert placed(c, 0, 0, duration=0) == (2040, Restart(pytest.approx(2.04), kind="video"))  # a true restart
    assert c.end == pytest.approx(2.08)  # a step after the newest packet, not on it


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """Two 4-s MPEG-TS recordings joined byte for byte, as `cat a.ts b.ts` makes them."""
    folder = tmp_path_factory.mktemp("joined")
    one = write_media(folder / "one.ts", seconds=4.0).read_bytes()
    (folder / "joined.ts").write_bytes(one + one)
    return folder / "joined.ts"


def test_a_joined_file_decodes_on_one_timeline(joined):
    info, events = file_source(joined, 16000)
    events = list(events)
    frames = [e.time for e in events if isinstance(e, VideoFrame)]
    audio = [e for e in events if isinstance(e, AudioChunk)]
    restarts = [e for e in events if isinstance(e, Restart)]
    assert info.duration < 4.5  # the container reports the first recording's length only
    assert len(frames) == 2 * 60 and frames == sorted(frames) and frames[-1] > 7.8  # 15 fps, no frame lost
    assert audio[-1].time + len(audio[-1].samples) / 16000 > 7.9
    assert len(restarts) == 1 and 3.9 < restarts[0].time < 4.2


def test_windows_go_on_after_a_restart_and_say_so(colearn_export, joined):
    args = ["infer", str(joined), "--models", str(colearn_export[0]), "--window", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["start"], line["end"]) for line in lines] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]
    assert all(line["modality"] == "av" and line["frames_sampled"] == 6 for line in lines)
    said = [any("timestamps restarted or jumped at 4." in n for n in line["notes"]) for line in lines]
    assert said == [False, False, True, False]  # the window the new segment starts in

    whole = CliRunner().invoke(main, ["infer", str(joined), "--models", str(colearn_export[0])])
    result = json.loads(whole.stdout)  # both recordings, 3 fps: not the first one's 12 frames
    assert result["frames_sampled"] >= 24 and any("timestamps restarted or jumped" in n for n in result["notes"])


av = pytest.importorskip("av")


def remux(src: Path, dst: Path, keep=lambda packet, t: True, shift: float = 0.0, fmt: str = "mpegts") -> Path:
    """``src`` copied to ``dst``, only the packets ``keep(packet, seconds)`` takes, every time moved by ``shift`` s."""
    with av.open(str(src)) as source, av.open(str(dst), "w", format=fmt) as sink:
        chosen = [s for s in source.streams if s.type in ("audio", "video")]
        streams = {s.index: sink.add_stream_from_template(s) for s in chosen}
        for packet in source.demux(*chosen):
            if packet.dts is None or not keep(packet, float(packet.pts * packet.time_base)):
                continue
            moved = round(shift / packet.time_base)
            packet.pts, packet.dts = packet.pts + moved, packet.dts + moved
            packet.stream = streams[packet.stream.index]
            sink.mux(packet)
    return dst


def write_marker(path: Path, seconds: float = 4.0, at: float = 1.0, fps: int = 15, codec: str = "mpeg4") -> Path:
    """Black frames and silence, but a white flash and a 1-kHz beep both starting at ``at`` seconds."""
    rate = 16000
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        packets = []
        for i in range(int(seconds * fps)):
            img = np.full((120, 160, 3), 255 if at <= i / fps < at + 0.4 else 0, np.uint8)
            img[:10, : (i * 7) % 160] = 128  # some motion, so that x264 makes B-frames
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            packets += video.encode(frame)
        packets += video.encode(None)
        t = np.arange(int(seconds * rate)) / rate
        samples = np.where((t >= at) & (t < at + 0.2), 0.5 * np.sin(2 * np.pi * 1000 * t), 0).astype(np.float32)
        for i in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, i : i + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i
            packets += audio.encode(frame)
        packets += audio.encode(None)
        packets.sort(key=lambda p: float(p.dts * p.time_base) if p.dts is not None else 0.0)
        for packet in packets:
            container.mux(packet)
    return path


def onsets(path: Path) -> tuple[list[float], list[float], list[float]]:
    """Stream times where flashes and beeps start, and the restarts, as `avemo infer` decodes ``path``."""
    _, events = file_source(path, 16000)
    flashes, beeps, restarts, lit, loud = [], [], [], False, False
    for e in events:
        if isinstance(e, Restart):
            restarts.append(e.time)
        elif isinstance(e, VideoFrame):
            now = e.rgb().mean() > 128
            if now and not lit:
                flashes.append(e.time)
            lit = now
        elif isinstance(e, AudioChunk):
            hits = np.nonzero(np.abs(e.samples) > 0.1)[0]
            if len(hits) and not loud:
                beeps.append(e.time + hits[0] / 16000)
            loud = len(hits) > 0
    return flashes, beeps, restarts


def join(path: Path, *parts: Path) -> Path:
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    return path


def test_audio_stays_in_step_with_video_after_a_restart(tmp_path):
    """The second recording's audio comes up 0.5 s after its video (as many encoders do): its beep must still
    land with its flash. On 4eec874 audio is timed by its sample count across the seam: the beep lands ~0.45 s
    before the flash for the whole second recording (same for a first recording whose audio ends early)."""
    one = write_marker(tmp_path / "one.ts")
    late = remux(one, tmp_path / "late_audio.ts", keep=lambda p, t: p.stream.type == "video" or t >= 0.5)
    flashes, beeps, restarts = onsets(join(tmp_path / "joined.ts", one, late))
    assert len(restarts) == 1 and len(flashes) == len(beeps) == 2
    assert abs(beeps[1] - flashes[1]) < 0.1, (flashes, beeps)


def test_a_low_frame_rate_h264_mkv_is_not_a_restart(tmp_path):
    """An ordinary 5-fps H.264 Matroska file (x264 defaults, B-frames; a security camera's rate): its first
    packets have no dts, so pts (reordered, 0.8 s ahead) is compared with the next dts. On 4eec874 that is a
    'restart' at 1.0 s, and every frame after it is placed 1 s late (the flash at 4.0 s, its beep at 3.0 s)."""
    if "libx264" not in av.codecs_available:
        pytest.skip("no libx264 in this PyAV")
    flashes, beeps, restarts = onsets(write_marker(tmp_path / "cam.mkv", seconds=6.0, at=3.0, fps=5, codec="libx264"))
    assert restarts == []
    assert flashes == pytest.approx([3.0], abs=0.05) and beeps == pytest.approx([3.0], abs=0.05)


def test_a_restart_after_a_long_gap_in_one_stream_keeps_the_second_recording(tmp_path):
    """An MPEG-TS whose audio sends nothing from 4 s to 16 s (a muted encoder) and then a second recording.
    The audio's gap counts as a restart of its own (segment 1); when the real restart comes, the video moves to
    segment 1 too, whose offset was made for the audio's gap: on 4eec874 the second recording's video goes back
    to 0-4 s, behind the windows, and is lost -- the issue's own symptom."""
    long = write_media(tmp_path / "long.ts", seconds=20.0, size=(160, 120))
    gap = remux(long, tmp_path / "gap.ts", keep=lambda p, t: p.stream.type == "video" or not 4.0 <= t < 16.0)
    one = write_media(tmp_path / "one.ts", seconds=4.0, size=(160, 120))
    _, events = file_source(join(tmp_path / "joined.ts", gap, one), 16000)
    frames = [e.time for e in events if isinstance(e, VideoFrame)]
    assert frames == sorted(frames), "video went back in time after the restart"
    assert frames[-1] > 23.5  # 20 s + 4 s of video


def test_a_recording_cut_mid_packet_then_the_next_one(tmp_path):
    """A camera reboot: the first recording ends mid-packet (not a multiple of 188 bytes), the next follows.
    The demuxer reads on past the seam, but on 4eec874 the first packet that does not decode (the cut AAC
    frame) ends the file's events: the whole second recording is lost without a word."""
    one = write_media(tmp_path / "one.ts", seconds=4.0)
    data = one.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2 + 77])
    _, events = file_source(join(tmp_path / "joined.ts", cut, one), 16000)
    events = list(events)
    frames = [e.time for e in events if isinstance(e, VideoFrame)]
    assert any(isinstance(e, Restart) for e in events)
    assert len(frames) > 80  # about 30 frames of the cut recording, then all 60 of the next


@pytest.mark.parametrize("start", [600.0, 2**33 / 90000 - 10])  # 10 s before the 33-bit wrap: FFmpeg goes negative
def test_an_mpeg_ts_that_starts_late_gives_windows_over_its_data(tmp_path, start):
    """An MPEG-TS whose timestamps start at 600 s (a broadcast capture, an HLS segment; 26 h for a 33-bit PTS).
    On 4eec874 its windows run from 0 (a file's times are not counted from its start): 302 windows of 2 s for
    4 s of media, 300 of them with the first real audio copied in (4eec874^ gave 2 empty ones; a TS starting at
    95,000 s gives 47,692 result lines and 40 s of CPU)."""
    one = write_media(tmp_path / "one.ts", seconds=4.0, size=(160, 120))
    late = remux(one, tmp_path / "late.ts", shift=start)
    windows = list(stream_windows(FeatureConfig(), None, late, 2.0))
    assert [(w.start, w.end) for w in windows] == [(0.0, 2.0), (2.0, 4.0)]


def _pts(b: bytes) -> int:
    return ((b[0] >> 1) & 7) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | (b[4] >> 1)


def _pts_bytes(v: int, prefix: int) -> bytes:
    return bytes([(prefix << 4) | ((v >> 29) & 0xE) | 1, (v >> 22) & 0xFF, ((v >> 14) & 0xFE) | 1, (v >> 7) & 0xFF,
                  ((v << 1) & 0xFE) | 1])  # fmt: skip


def glitch_video_pts(src: Path, dst: Path, at: float, delta: float) -> Path:
    """``src`` with the PTS (and DTS) of the one video PES nearest ``at`` s moved by ``delta`` s: a bit error."""
    data, best = bytearray(src.read_bytes()), None
    for off in range(0, len(data) - 187, 188):
        pkt = data[off : off + 188]
        if pkt[0] != 0x47 or not pkt[1] & 0x40:
            continue
        p = 4 + (1 + pkt[4] if (pkt[3] >> 4) & 2 else 0)
        if pkt[p : p + 3] != b"\x00\x00\x01" or not 0xE0 <= pkt[p + 3] <= 0xEF or not (pkt[p + 7] >> 6) & 2:
            continue
        pts = _pts(pkt[p + 9 : p + 14])
        if best is None or abs(pts / 90000 - at) < abs(best[1] / 90000 - at):
            best = (off + p, pts, pkt[p + 7] >> 6)
    head, pts, flags = best
    moved = round(delta * 90000)
    data[head + 9 : head + 14] = _pts_bytes(pts + moved, 3 if flags == 3 else 2)
    if flags == 3:
        data[head + 14 : head + 19] = _pts_bytes(_pts(data[head + 14 : head + 19]) + moved, 1)
    dst.write_bytes(bytes(data))
    return dst


def test_one_corrupt_video_timestamp_does_not_move_the_rest_of_the_video(tmp_path):
    """One video PES of an MPEG-TS whose PTS is 5 s off (a bit error on a broadcast or UDP link): 4eec874^ misplaced
    that one frame. On 4eec874 the jump forward (under 10 s) is kept, the step back after it is a 'restart' of
    the video alone, placed where that frame left the media: the rest of the video lands 5 s late, the audio
    stays (the flash at 8.06 s, its beep at 3.06 s) and a restart is announced that never happened."""
    marker = write_marker(tmp_path / "marker.ts", seconds=5.0, at=3.0)
    flashes, beeps, _ = onsets(glitch_video_pts(marker, tmp_path / "glitch.ts", at=2.0, delta=5.0))
    assert abs(flashes[0] - beeps[0]) < 0.1, (flashes, beeps)
