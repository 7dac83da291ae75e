"""Timestamps that restart (recordings joined, a camera or encoder restart, a wrap): one continuous timeline,
a new segment said in the output, for files (`avemo infer`, `--window`) and packets as any source gives them."""

import json
from fractions import Fraction
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.runtime.media.continuity import TS_DISCONT, Continuity, Restart
from avemo.runtime.media.decode import AudioChunk, VideoFrame
from avemo.runtime.media.sample import write_media
from avemo.runtime.stream.sources import file_source

MS = Fraction(1, 1000)


def packet(stream, ms, duration=40):
    return SimpleNamespace(stream=SimpleNamespace(index=stream), dts=ms, pts=ms, time_base=MS, duration=duration)


def placed(continuity, stream, ms):
    p = packet(stream, ms)
    restart = continuity.place(p)
    return p.pts, restart


def test_a_restart_continues_where_the_media_got_to_and_both_streams_share_its_offset():
    c = Continuity(SimpleNamespace(format=SimpleNamespace(flags=TS_DISCONT)))
    for ms in range(0, 8000, 40):  # stream 1 lags a little, as interleaving makes one stream do
        assert placed(c, 0, ms)[0] == ms and (ms > 7860 or placed(c, 1, ms + 20)[0] == ms + 20)  # untouched
    pts, restart = placed(c, 0, 1400)  # stream 0 starts again at 1.4 s
    assert restart.time == pytest.approx(8.0) and pts == 8000  # where the media read so far ended (7.96 + 0.04 s)
    assert placed(c, 1, 7900)[0] == 7900  # a late packet of the old recording keeps its place
    assert placed(c, 1, 1420) == (8020, None)  # the other stream joins the segment: same offset, in step
    assert placed(c, 0, 1440) == (8040, None)
    assert placed(c, 0, 1440 + 3_600_000)[1].time == pytest.approx(8.08)  # MPEG-TS: an hour forward is a restart too


def test_forward_gaps_are_kept_where_the_format_has_no_discontinuities():
    c = Continuity(SimpleNamespace(format=SimpleNamespace(flags=0)))  # mp4: a long gap is a real gap
    assert placed(c, 0, 0)[0] == 0 and placed(c, 0, 60_000) == (60_000, None)
    assert placed(c, 0, 58_400) == (60_040, Restart(pytest.approx(60.04)))  # going back: a restart in any format
    assert placed(c, 0, 58_500)[0] == 60_040 + 100  # jitter within a segment is not


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
    said = [any("timestamps restarted at 4." in n for n in line["notes"]) for line in lines]
    assert said == [False, False, True, False]  # the window the new segment starts in

    whole = CliRunner().invoke(main, ["infer", str(joined), "--models", str(colearn_export[0])])
    result = json.loads(whole.stdout)  # both recordings, 3 fps: not the first one's 12 frames
    assert result["frames_sampled"] >= 24 and any("timestamps restarted" in n for n in result["notes"])
