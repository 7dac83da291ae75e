"""`avemo prepare` end to end on a synthetic MOSEI tree, bad inputs included, then training on its cache."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.config import PRESETS
from avemo.errors import AvemoError
from avemo.train.cache import CacheSplit
from avemo.train.mosei import load_folds, prepare, read_segments
from avemo.train.synth import write_mosei_tree
from tests.conftest import FAULTS, kill_leaves_no_orphans

FEATURES = PRESETS["tiny"].features
HAPPY, SAD = [1.0, 0, 0, 0, 0, 0], [0, 0.7, 0, 0, 0, 0]


@pytest.fixture(scope="module")
def mosei(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosei")
    videos = {
        # Unsorted intervals, one partly beyond the end of the 4-s video, one empty.
        "vidA": {
            "intervals": [[2.0, 3.5], [0.2, 1.6], [3.2, 9.0], [1.0, 1.0]],
            "emotions": [HAPPY, SAD, HAPPY, SAD],
            "media": {"seconds": 4.0},
        },
        "vidSilent": {"intervals": [[0.0, 1.5]], "emotions": [SAD], "media": {"seconds": 2.0, "audio_rate": None}},
        "vidNoFace": {"intervals": [[0.0, 1.5]], "emotions": [HAPPY], "media": {"seconds": 2.0, "face": False}},
        "vidStereo48k": {
            "intervals": [[0.5, 2.0]],
            "emotions": [HAPPY],
            "media": {"seconds": 2.5, "audio_rate": 48000, "audio_layout": "stereo"},
        },
        "vidCorrupt": {"intervals": [[0.0, 1.0]], "emotions": [SAD], "media": b"\x00\x01 not an mp4" * 50},
        "vidMissing": {"intervals": [[0.0, 1.0]], "emotions": [SAD], "media": None},
        "vidOutside": {"intervals": [[10.0, 12.0]], "emotions": [SAD], "media": {"seconds": 2.0}},
        "vidNotInFolds": {"intervals": [[0.0, 1.0]], "emotions": [SAD], "media": {"seconds": 1.5}},
    }
    folds = {
        "train": ["vidA", "vidSilent", "vidNoFace", "vidCorrupt", "vidMissing"],
        "valid": ["vidStereo48k", "vidOutside"],
        "test": ["vidA_test_only"],
    }
    return write_mosei_tree(root, videos, folds)


def test_official_folds_ship_with_the_package():
    folds = load_folds()
    assert sum(1 for s in folds.values() if s == "train") > 2000
    assert set(folds.values()) == {"train", "valid", "test"}


def test_segments_are_sorted_clipped_and_skips_counted(mosei):
    root, folds_path = mosei
    segments, skipped = read_segments(root / "CMU_MOSEI_Labels.csd", load_folds(folds_path))
    a = [s for s in segments if s.video_id == "vidA"]
    assert [s.start for s in a] == [0.2, 2.0, 3.2]  # sorted; the empty one skipped
    assert a[0].labels == (0, 1, 0, 0, 0, 0)
    assert skipped == {"empty or invalid interval": 1, "video not in the folds": 1}


def test_prepare_end_to_end_with_bad_inputs_and_resume(mosei, tmp_path):
    root, folds_path = mosei
    out = tmp_path / "cache"
    summary = prepare(root, out, FEATURES, workers=1, folds_path=folds_path, progress=False)
    failures = {json.loads(line)["clip"]: json.loads(line)["reason"] for line in (out / "failures.jsonl").open()}
    assert set(failures) == {"vidCorrupt_0", "vidMissing_0", "vidOutside_0"}
    assert "cannot open media" in failures["vidCorrupt_0"]
    assert summary["clips"] == {"train": 5, "valid": 1, "test": 0}
    train = CacheSplit(out, "train", FEATURES)
    by_id = {cid: i for i, cid in enumerate(train.ids)}
    silent, no_face = by_id["vidSilent_0"], by_id["vidNoFace_0"]
    assert train.audio_length(silent) == 0 and train.face_count(silent) > 0  # visual only
    assert train.face_count(no_face) == 0 and train.audio_length(no_face) > 100  # audio only
    seg = by_id["vidA_3"]  # [3.2, 9.0] cut to the 4-s file (ids follow sorted order)
    assert 60 <= train.audio_length(seg) <= 90
    assert train.face_count(by_id["vidA_0"]) == 4  # 1.4 s at 3 fps, face found in each
    np.testing.assert_array_equal(train.labels[by_id["vidA_0"]], [0, 1, 0, 0, 0, 0])
    assert summary["this_run"]["failed"] == 3

    # Resume: nothing left but the failures, which are retried and fail again.
    again = prepare(root, out, FEATURES, workers=1, folds_path=folds_path, progress=False)
    assert again["this_run"].get("done", 0) == 0 and again["clips"] == summary["clips"]


def test_prepare_with_two_workers_matches_one(mosei, tmp_path):
    root, folds_path = mosei
    one = prepare(root, tmp_path / "one", FEATURES, workers=1, folds_path=folds_path, progress=False)
    two = prepare(root, tmp_path / "two", FEATURES, workers=2, folds_path=folds_path, progress=False)
    assert one["clips"] == two["clips"]
    a, b = CacheSplit(tmp_path / "one", "train"), CacheSplit(tmp_path / "two", "train")
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.audio(0), b.audio(0))


def test_cache_with_other_settings_is_refused_before_any_work(mosei, tmp_path):
    root, folds_path = mosei
    prepare(root, tmp_path, FEATURES, folds_path=folds_path, progress=False)
    with pytest.raises(AvemoError, match="other feature settings"):
        prepare(root, tmp_path, PRESETS["paper"].features, folds_path=folds_path, progress=False)


def test_the_cache_records_its_face_detector(mosei, tmp_path):
    from avemo.train.cache import read_meta

    root, folds_path = mosei
    prepare(root, tmp_path / "haar", FEATURES, folds_path=folds_path, detector="haar", progress=False)
    recorded = read_meta(tmp_path / "haar")
    assert recorded.face_detector == "haar" and len(recorded.face_detector_sha256) == 64
    assert (recorded.face_margin, recorded.face_detect_side) == (0.2, 480)  # Haar's own settings
    # Resuming that cache with another detector would mix crops of two detectors: refused.
    with pytest.raises(AvemoError, match="face_detector"):
        prepare(root, tmp_path / "haar", FEATURES, folds_path=folds_path, detector="yunet", progress=False)
    # A model trained with YuNet crops evaluated (or calibrated) on this cache: refused, both named.
    from avemo.train.cache import CacheSplit

    with pytest.raises(AvemoError, match="face_detector: haar vs yunet"):
        CacheSplit(tmp_path / "haar", "train", FEATURES)


def test_not_a_mosei_tree(tmp_path):
    with pytest.raises(AvemoError, match=r"no CMU_MOSEI_Labels\.csd"):
        prepare(tmp_path, tmp_path / "out", FEATURES, progress=False)


def test_prepared_cache_trains_through_the_cli(mosei, tmp_path):
    root, folds_path = mosei
    runner = CliRunner()
    cache = tmp_path / "cache"
    result = runner.invoke(
        main,
        [
            "prepare",
            "--mosei-root",
            str(root),
            "--out",
            str(cache),
            "--preset",
            "tiny",
            "--folds",
            str(folds_path),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "train       5  (16,327)" in result.output
    result = runner.invoke(
        main,
        [
            "train",
            "--data",
            str(cache),
            "--preset",
            "tiny",
            "--regime",
            "colearn",
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_prepare_takes_its_workers_with_it(mosei, tmp_path, sig):
    root, folds_path = mosei
    command = [str(Path(sys.executable).parent / "avemo"), "prepare", "--mosei-root", str(root), "--quiet"]
    command += ["--out", str(tmp_path / "cache"), "--preset", "tiny", "--folds", str(folds_path), "--workers", "2"]
    kill_leaves_no_orphans(command, sig, workers=2)


def test_bad_folds_and_an_out_that_is_a_file_are_one_line_and_write_nothing(mosei, tmp_path):
    root, folds_path = mosei
    folds = tmp_path / "folds.json"
    cases = {
        '{"train": [': "not JSON",
        "[]": "not a folds file: expected a JSON object",
        '{"train": [], "valid": []}': "not a folds file: expected a JSON object",
        '{"train": "vidA", "valid": [], "test": []}': "'train' must be a list of video ids",
        '{"train": [1], "valid": [], "test": []}': "'train' must be a list of video ids",
        '{"train": ["vidA"], "valid": ["vidA"], "test": []}': "video 'vidA' is in both 'train' and 'valid'",
        "[" * 100000: "not JSON",
    }
    out = tmp_path / "cache"
    base = ["prepare", "--mosei-root", str(root), "--preset", "tiny", "--quiet"]
    for text, message in cases.items():
        folds.write_text(text)
        result = CliRunner().invoke(main, [*base, "--out", str(out), "--folds", str(folds)])
        assert result.exit_code == 1 and message in result.output, (text[:40], result.output)
        assert result.output.count("\n") == 1 and str(folds) in result.output
    folds.write_bytes(b"\xff\xfe{")
    result = CliRunner().invoke(main, [*base, "--out", str(out), "--folds", str(folds)])
    assert result.exit_code == 1 and "unreadable folds file" in result.output, result.output
    assert not out.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    result = CliRunner().invoke(main, [*base, "--out", str(a_file), "--folds", str(folds_path)])
    assert result.exit_code == 1 and "exists and is not a directory" in result.output, result.output
    assert a_file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folds.json"]


def test_a_rerun_cleans_what_killed_runs_left_and_keeps_one_line_per_failure(mosei, tmp_path):
    root, folds_path = mosei
    out = tmp_path / "cache"
    prepare(root, out, FEATURES, folds_path=folds_path, progress=False)
    failed = {"vidCorrupt_0", "vidMissing_0", "vidOutside_0"}
    stray = [out / "shards" / "train" / ".vidA_0.npz.k1ll3d.tmp", out / "train" / ".fbank.npy.k1ll3d.tmp"]
    for path in stray:
        path.write_bytes(b"half")
    (out / ".train.avemo-new-4194999").mkdir()  # a killed pack's staging folder (no such process)
    with (out / "failures.jsonl").open("a") as log:
        log.write(json.dumps({"clip": "vidCorrupt_0", "reason": "again"}) + "\n")  # a duplicate
        log.write(json.dumps({"clip": "vidA_0", "reason": "done since"}) + "\n")  # stale: done
        log.write(json.dumps({"clip": "gone_0", "reason": "no longer a segment"}) + "\n")
        log.write('{"clip": "vidMiss')  # the truncated line of a full disk
    (out / "shards" / "train" / "vidSilent_0.npz").unlink()  # to do again: it succeeds
    summary = prepare(root, out, FEATURES, folds_path=folds_path, progress=False)
    assert summary["this_run"]["done"] == 1 and summary["this_run"]["failed"] == 3
    lines = (out / "failures.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["clip"] for line in lines) == sorted(failed)  # each once, every line whole
    assert not [p.name for p in out.rglob("*") if ".tmp" in p.name or ".avemo-" in p.name]
    assert len(CacheSplit(out, "train")) == 5


def test_a_full_disk_stops_prepare_in_one_line_and_logs_no_failures(mosei, tmp_path):
    root, folds_path = mosei
    out = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(FAULTS), "AVEMO_FULL_DISK": "*.npz*", "AVEMO_FULL_DISK_AFTER": "3"}
    command = [str(Path(sys.executable).parent / "avemo"), "prepare", "--mosei-root", str(root), "--quiet"]
    command += ["--out", str(out), "--preset", "tiny", "--folds", str(folds_path)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"Error: {out / 'shards'}") and "cannot write (No space left on device)" in line
    assert len(list(out.glob("shards/*/*.npz"))) == 2 and not list(out.rglob("*.tmp"))  # 2 written before
    assert "No space" not in (out / "failures.jsonl").read_text()
