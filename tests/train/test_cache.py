"""The feature cache: round trip, and the settings, clips and metadata it refuses."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from itertools import count

import numpy as np
import pytest

from avemo.config import PRESETS
from avemo.errors import AvemoError
from avemo.train.cache import CacheSplit, CacheWriter, Clip, encode_jpeg
from tests.conftest import FAULTS

FEATURES = PRESETS["tiny"].features


def _clip(clip_id="c1", frames=20, faces=2, labels=None):
    face = np.full((FEATURES.face_size, FEATURES.face_size, 3), 128, np.uint8)
    return Clip(
        clip_id=clip_id,
        fbank=np.random.default_rng(0).normal(size=(frames, FEATURES.num_mel_bins)).astype(np.float32),
        faces_jpeg=[encode_jpeg(face, 90)] * faces,
        labels=np.zeros(6, np.float32) if labels is None else labels,
    )


def test_cache_round_trip(tmp_path):
    writer = CacheWriter(tmp_path, FEATURES, source="test")
    writer.add("train", _clip("a", frames=20, faces=2, labels=np.eye(6, dtype=np.float32)[1]))
    writer.add("train", _clip("b", frames=0, faces=3))  # no audio: visual only
    writer.add("train", _clip("c", frames=7, faces=0))  # no face: audio only
    assert writer.pack()["train"] == 3
    split = CacheSplit(tmp_path, "train", FEATURES)
    assert split.ids == ["a", "b", "c"]
    assert split.audio(0).shape == (20, FEATURES.audio_dim)
    assert split.audio(1).shape == (0, FEATURES.audio_dim)
    assert split.faces(1).shape == (3, FEATURES.face_size, FEATURES.face_size, 3)
    assert split.faces(2).shape[0] == 0
    np.testing.assert_array_equal(split.labels[0], np.eye(6)[1])
    assert abs(int(split.faces(0).mean()) - 128) <= 2  # JPEG is lossy, but close


def test_cache_with_other_feature_settings_is_refused(tmp_path):
    CacheWriter(tmp_path, FEATURES, source="test")
    other = dataclasses.replace(FEATURES, face_size=64)
    with pytest.raises(AvemoError, match="face_size: 48 vs 64"):
        CacheWriter(tmp_path, other, source="test")


def test_model_and_cache_feature_mismatch_names_the_cache(tiny_cache):
    with pytest.raises(AvemoError, match=str(tiny_cache)):
        CacheSplit(tiny_cache, "train", dataclasses.replace(FEATURES, num_mel_bins=40))


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        (_clip(frames=0, faces=0), "no audio frames and no faces"),
        (dataclasses.replace(_clip(), fbank=np.zeros((5, 13), np.float32)), r"expected \[frames, 80\]"),
        (dataclasses.replace(_clip(), fbank=np.full((5, 80), np.nan, np.float32)), "NaN or inf"),
        (dataclasses.replace(_clip(), labels=np.zeros(5, np.float32)), "labels have shape"),
    ],
    ids=["zero-frames", "wrong-dim", "nan", "labels"],
)
def test_bad_clips_are_refused_with_their_name(tmp_path, clip, message):
    writer = CacheWriter(tmp_path, FEATURES, source="test")
    with pytest.raises(AvemoError, match=message) as info:
        writer.add("train", clip)
    assert "c1" in str(info.value)


def test_inf_in_a_packed_cache_names_the_clip(tmp_path):
    writer = CacheWriter(tmp_path, FEATURES, source="test")
    writer.add("train", _clip("good"))
    writer.pack()
    fbank = np.load(tmp_path / "train" / "fbank.npy")
    fbank[3, 0] = np.inf
    np.save(tmp_path / "train" / "fbank.npy", fbank)
    with pytest.raises(AvemoError, match="clip good has NaN or inf"):
        CacheSplit(tmp_path, "train").audio(0)


def test_not_a_cache(tmp_path):
    with pytest.raises(AvemoError, match="not an avemo feature cache"):
        CacheSplit(tmp_path, "train")


def test_cache_from_a_newer_avemo_or_with_broken_metadata(tmp_path):
    CacheWriter(tmp_path, FEATURES, source="test")
    meta = json.loads((tmp_path / "cache.json").read_text())
    (tmp_path / "cache.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(AvemoError, match="cache version 99 is newer"):
        CacheSplit(tmp_path, "train")
    (tmp_path / "cache.json").write_text("{not json")
    with pytest.raises(AvemoError, match="unreadable feature cache"):
        CacheSplit(tmp_path, "train")


PACK = """
import sys
from avemo.config import PRESETS
from avemo.train.cache import CacheWriter
CacheWriter(sys.argv[1], PRESETS["tiny"].features, source="test").pack()
"""


def _whole(root, ids):
    """The split at ``root`` loads, lists ``ids`` and each clip's arrays are its own."""
    split = CacheSplit(root, "train", FEATURES)
    assert split.ids == ids
    frames = {"a": 20, "b": 0, "c": 7, "d": 11}
    assert [split.audio_length(i) for i in range(len(ids))] == [frames[c] for c in ids]
    assert len(split._fbank) == sum(frames[c] for c in ids)  # the arrays hold these clips, no more
    assert split.faces(len(ids) - 1).shape[0] == {"a": 2, "b": 3, "c": 0, "d": 1}[ids[-1]]


def test_a_kill_at_any_rename_of_a_repack_leaves_the_old_split_or_the_new(tmp_path):
    writer = CacheWriter(tmp_path / "cache", FEATURES, source="test")
    for clip_id, frames, faces in (("a", 20, 2), ("b", 0, 3), ("c", 7, 0)):
        writer.add("train", _clip(clip_id, frames=frames, faces=faces))
    writer.pack()
    writer.add("train", _clip("d", frames=11, faces=1))
    seen = set()
    for n in count(1):
        work = tmp_path / f"kill{n}"
        shutil.copytree(tmp_path / "cache", work)
        env = {**os.environ, "PYTHONPATH": str(FAULTS), "AVEMO_KILL_AFTER_RENAME": str(n)}
        run = subprocess.run([sys.executable, "-c", PACK, str(work)], env=env, timeout=120)
        ids = json.loads((work / "train" / "clips.json").read_text())
        assert ids in (list("abc"), list("abcd"))
        _whole(work, ids)
        seen.add("".join(ids))
        # The next pack (the rerun) cleans what the kill left and packs every clip.
        CacheWriter(work, FEATURES, source="test").pack()
        _whole(work, list("abcd"))
        assert not [p.name for p in work.rglob("*") if ".tmp" in p.name or ".avemo-" in p.name]
        if run.returncode == 0:
            break
        assert run.returncode == -9
    assert seen == {"abc", "abcd"} and n > 2


def test_a_split_whose_arrays_and_index_disagree_is_refused_and_repacked(tmp_path):
    writer = CacheWriter(tmp_path, FEATURES, source="test")
    writer.add("train", _clip("a", frames=20, faces=2))
    writer.pack()
    old_index = (tmp_path / "train" / "index.npz").read_bytes()
    writer.add("train", _clip("b", frames=0, faces=3))
    writer.pack()
    (tmp_path / "train" / "index.npz").write_bytes(old_index)  # as a kill between two files' renames left it
    with pytest.raises(AvemoError, match=r"train: its arrays, index and clip list disagree .* rerun"):
        CacheSplit(tmp_path, "train")
    (tmp_path / "train" / "fbank.npy").unlink()
    with pytest.raises(AvemoError, match="disagree"):
        CacheSplit(tmp_path, "train")
    (tmp_path / "shards" / "train" / ".c.npz.x1y2.tmp").write_bytes(b"half a shard")
    assert writer.pack()["train"] == 2  # the rerun
    assert CacheSplit(tmp_path, "train").ids == ["a", "b"]
    assert not list(tmp_path.rglob("*.tmp"))
