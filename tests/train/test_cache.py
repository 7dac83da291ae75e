"""The feature cache: round trip, and the settings, clips and metadata it refuses."""

import dataclasses
import json

import numpy as np
import pytest

from avemo.config import PRESETS
from avemo.errors import AvemoError
from avemo.train.cache import CacheSplit, CacheWriter, Clip, encode_jpeg

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
