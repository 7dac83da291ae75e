"""Checkpoints: a round trip keeps config and weights; missing, corrupt, foreign and newer ones are refused."""

import json

import pytest
import torch

from avemo.config import CONFIG_VERSION, PRESETS, ModelConfig, TrainConfig, from_dict, to_dict
from avemo.errors import AvemoError
from avemo.train.checkpoint import load_model, read_checkpoint, save_checkpoint
from avemo.train.model import CrossModalTransformer


def test_checkpoint_round_trip_keeps_config_and_weights(tmp_path, micro_config):
    model = CrossModalTransformer(micro_config).eval()
    save_checkpoint(tmp_path / "m.pt", model, TrainConfig(regime="colearn"), epoch=3)
    loaded, payload = load_model(tmp_path / "m.pt")
    assert loaded.cfg == micro_config
    assert payload["epoch"] == 3
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert not list(tmp_path.glob(".*tmp")), "atomic write left a temporary file"


def test_missing_corrupt_and_foreign_checkpoints(tmp_path):
    with pytest.raises(AvemoError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(AvemoError, match=r"bad\.pt: corrupt or unreadable"):
        read_checkpoint(tmp_path / "bad.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(AvemoError, match=r"other\.pt: not an avemo checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_truncated_checkpoint(tmp_path, micro_config):
    save_checkpoint(tmp_path / "m.pt", CrossModalTransformer(micro_config), TrainConfig())
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(AvemoError, match="corrupt or unreadable"):
        read_checkpoint(tmp_path / "m.pt")


def test_config_from_a_newer_version_is_refused():
    data = to_dict(PRESETS["tiny"])
    assert from_dict(ModelConfig, json.loads(json.dumps(data))) == PRESETS["tiny"]
    data["config_version"] = CONFIG_VERSION + 1
    with pytest.raises(AvemoError, match="newer than this avemo supports"):
        from_dict(ModelConfig, data, source="x.pt")
