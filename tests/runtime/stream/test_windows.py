"""One pass over a file for windows (`Recognizer.stream`, `avemo infer --window`, and `avemo infer` without
--window, window by window) against per-window and whole-file decoding."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.config import FeatureConfig
from avemo.runtime.faces import FacePipeline
from avemo.runtime.media.decode import media_duration
from avemo.runtime.media.extract import extract
from avemo.runtime.media.sample import write_media
from avemo.runtime.recognizer import Recognizer
from avemo.runtime.stream.run import stream_windows
from avemo.runtime.stream.sources import file_source
from avemo.runtime.stream.windows import WindowCutter

FEATURES = FeatureConfig()
# A window decoded alone seeks (AAC and the resampler warm up over its first frames) and mirrors
# samples at both edges; the stream's filterbank sees the real audio there.
EDGE_FRAMES = 10


def cut(path, window, hop, faces):
    info, events = file_source(path, FEATURES.sample_rate)
    starts = np.arange(0.0, max(info.duration - window, 0.0) + 1e-6, hop).tolist()
    cutter = WindowCutter(FEATURES, faces, info, starts, window)
    return [w for e in events for w in cutter.feed(e)] + list(cutter.close()), cutter


@pytest.mark.parametrize(("window", "hop"), [(3.0, 2.0), (2.5, 1.0), (3.0, 2.5)])
def test_windows_are_what_decoding_each_window_gives(long_media, window, hop):
    faces = FacePipeline(FEATURES)
    windows, _ = cut(long_media, window, hop, faces)
    starts = np.arange(0.0, max(media_duration(long_media) - window, 0.0) + 1e-6, hop)
    assert [(s, e) for s, e, _ in windows] == [(float(s), float(s) + window) for s in starts]
    for start, end, got in windows:
        ref = extract(long_media, FEATURES, faces, start, end)
        assert got.fbank.shape == ref.fbank.shape
        np.testing.assert_allclose(got.fbank[EDGE_FRAMES:-3], ref.fbank[EDGE_FRAMES:-3], atol=1e-4)
        assert got.frames_sampled == ref.frames_sampled and got.frames_with_face == ref.frames_with_face
        # Tracking runs across windows instead of restarting: the boxes differ by a few % of a face.
        assert max(abs(a - b) for a, b in zip(got.face["box"], ref.face["box"], strict=True)) < 0.1 * ref.face["box"][3]


def test_the_stream_cuts_windows_ready_for_the_model_and_never_runs_it(long_media):
    """No model here: each window's features (the Recognizer's ``stream`` recognises them); a file's have no lag."""
    windows = list(stream_windows(FEATURES, None, long_media, 3.0, 2.0, video=False))
    assert [(w.start, w.end) for w in windows] == [(0.0, 3.0), (2.0, 5.0), (4.0, 7.0)]
    assert all(w.source == str(long_media) and w.lag is None and w.features.has_audio for w in windows)
    assert all(w.features.frames_sampled == 0 for w in windows)  # video not decoded


def test_stream_recognitions_match_recognize(colearn_export, long_media):
    recognizer = Recognizer(colearn_export[0], threads=1)
    streamed = list(recognizer.stream(long_media, 3.0, 2.0))
    single = [recognizer.recognize(long_media, r.start, r.end) for r in streamed]
    assert [(r.start, r.end) for r in streamed] == [(0.0, 3.0), (2.0, 5.0), (4.0, 7.0)]
    for a, b in zip(streamed, single, strict=True):
        assert a.modality == b.modality and a.frames_sampled == b.frames_sampled == 9
        assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) < 2e-2


def test_max_seconds_ends_with_the_last_whole_window(colearn_export, long_media):
    recognizer = Recognizer(colearn_export[0], threads=1)
    spans = [(r.start, r.end) for r in recognizer.stream(long_media, 2.0, 1.0, max_seconds=4.0)]
    assert spans == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)]


def test_audio_kept_is_bounded_by_the_window(tmp_path):
    path = write_media(tmp_path / "talk.m4a", seconds=30.0, video=False)
    windows, cutter = cut(path, 2.0, 1.0, None)
    assert len(windows) == 29 and all(w.has_audio for _, _, w in windows)
    assert cutter.peak_buffered_samples <= (2.0 + 0.5) * FEATURES.sample_rate  # not 30 s


def test_a_truncated_stream_keeps_the_windows_before_the_cut(colearn_export, tmp_path):
    good = write_media(tmp_path / "good.ts", seconds=7.0).read_bytes()  # MPEG-TS: readable up to a cut
    (tmp_path / "cut.ts").write_bytes(good[: int(len(good) * 0.6)])
    args = ["infer", str(tmp_path / "cut.ts"), "--models", str(colearn_export[0]), "--window", "2", "--hop", "1"]
    result = CliRunner().invoke(main, args)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 0 and len(lines) >= 2, result.output
    assert all(line["modality"] == "av" and line["frames_sampled"] == 6 for line in lines)


@pytest.mark.parametrize(("seconds", "video", "windows"), [(4.0, True, 1), (65.0, False, 3)])
def test_one_pass_recognition_equals_the_whole_file_decode(colearn_export, tmp_path, seconds, video, windows):
    """`avemo infer` without --window now decodes window by window (bounded memory): same answers as the
    whole-file decode it replaced (kept as ``prepare``)."""
    media = write_media(tmp_path / "clip.mp4", seconds=seconds, video=video)
    recognizer = Recognizer(colearn_export[0], threads=1)
    new = recognizer.recognize(media)
    clip, feats = recognizer.prepare(media)
    old = recognizer._recognized(str(media), (None, None), clip, feats, 0.0)
    assert max(abs(new.probs[k] - old.probs[k]) for k in new.probs) < 1e-5
    assert (new.modality, new.notes, new.frames_sampled, new.frames_with_face) == (
        old.modality,
        old.notes,
        old.frames_sampled,
        old.frames_with_face,
    )
    assert windows == 1 or f"recognised in {windows} windows" in new.notes[-1]


def test_one_pass_memory_does_not_grow_with_the_file(colearn_export, tmp_path):
    """Peak RSS of a fresh process recognising a 10-min file vs a 1-min one (the numbers for 1 h and 2 h:
    scripts/bench_long_media.py, docs/BENCHMARKS.md). The whole-file decode grew by ~500 MB here."""
    from avemo.runtime.media.sample import write_long_audio

    code = (  # VmHWM: this process's own high-water mark (ru_maxrss would count the forking pytest's)
        "import re, sys; from avemo.runtime.recognizer import Recognizer; "
        "Recognizer(sys.argv[1], threads=1).recognize(sys.argv[2]); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    )
    peaks = []
    for minutes in (1, 10):
        media = write_long_audio(tmp_path / f"{minutes}.m4a", 60 * minutes)
        out = subprocess.run([sys.executable, "-c", code, str(colearn_export[0]), str(media)], capture_output=True)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        peaks.append(int(out.stdout.split()[-1]) / 1024)
    assert peaks[1] - peaks[0] < 40, f"peak RSS {peaks[0]:.0f} MB at 1 min, {peaks[1]:.0f} MB at 10 min"
