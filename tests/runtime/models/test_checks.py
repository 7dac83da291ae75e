"""A manifest is input: paths that leave the folder, malformed or hostile values, unreadable files: one line each."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.contract import MANIFEST_FILE
from avemo.errors import AvemoError
from avemo.io import sha256_file
from avemo.runtime.models.manifest import load_manifest
from tests.conftest import edit_manifest


def _one_line_error(models: Path, match: str) -> None:
    """Both the loader and `avemo verify` refuse it with one line naming the problem, no traceback."""
    with pytest.raises(AvemoError, match=match):
        load_manifest(models)
    result = CliRunner().invoke(main, ["verify", str(models)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def _outside_file(tmp_path: Path) -> tuple[Path, str]:
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    return secret, sha256_file(secret)


def test_manifest_files_cannot_leave_the_folder(models, tmp_path):
    secret, digest = _outside_file(tmp_path)
    for rel in ("../secret.txt", str(secret), "fp16/../../secret.txt"):
        copy = tmp_path / f"m{abs(hash(rel))}"
        shutil.copytree(models, copy)
        edit_manifest(copy, lambda d, rel=rel: d["files"].__setitem__(rel, digest))
        _one_line_error(copy, r"files\[.*secret.txt'\] = .* leaves the model folder")


def test_a_symlink_leaving_the_folder_is_refused(models, tmp_path):
    secret, digest = _outside_file(tmp_path)
    (models / "notes.txt").symlink_to(secret)
    edit_manifest(models, lambda d: d["files"].__setitem__("notes.txt", digest))
    _one_line_error(models, r"files\['notes.txt'\] = 'notes.txt' is a symlink leaving the model folder")
    (models / "notes.txt").unlink()
    (models / "notes.txt").symlink_to("fp16/avemo.weights")  # inside: allowed
    edit_manifest(models, lambda d: d["files"].__setitem__("notes.txt", sha256_file(models / "fp16/avemo.weights")))
    load_manifest(models)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("precisions.fp16.tensorrt_graphs", {"dir": "../../.."}, r"precisions.fp16.tensorrt_graphs.dir = '../../..'"),
        ("precisions.fp16.dir", "/tmp", r"precisions.fp16.dir = '/tmp' leaves"),
        ("model_config.features.face_detector", "../yunet.onnx", r"face_detector = '../yunet.onnx' leaves"),
        ("model_config.features.face_detector", "/etc/yunet.onnx", r"face_detector = '/etc/yunet.onnx' leaves"),
        ("model_config.features.num_mel_bins", 10_000_000, r"num_mel_bins = 10000000 is out of bounds"),
        ("model_config.features.face_size", 1_000_000, r"face_size = 1000000 is out of bounds"),
        ("model_config.features.frame_shift_ms", 0, r"frame_shift_ms = 0 is out of bounds"),
        ("model_config.features.sample_rate", -16000, r"sample_rate = -16000 is out of bounds"),
        ("model_config.features.fps", "3", r"fps = '3' is not a number"),
        ("model_config.features.face_size", 48.5, r"face_size = 48.5 is not an integer"),
        ("model_config.features.fps", float("nan"), r"fps = nan is out of bounds"),
        ("model_config.d_model", True, r"d_model = True is not an integer"),
        ("model_config.use_audio", 1, r"use_audio has the wrong type"),
        ("profiles.batch", [1, 4, 10**9], r"profiles.batch\[2\] = 1000000000 is out of bounds"),
        ("profiles.audio_frames", [0, 500, 3000], r"profiles.audio_frames\[0\] = 0 is out of bounds"),
        ("profiles.face_frames", [20, 15, 90], r"profiles.face_frames = \[20, 15, 90\] is not min <= opt <= max"),
        ("profiles", None, r"profiles is missing"),
        ("graphs", [], r"graphs has the wrong type \(list\)"),
        ("graphs.av.inputs", [{"name": "faces"}], r"graphs.av.inputs must be audio_feats"),
        ("precisions.fp16.parity_tolerance", -1, r"parity_tolerance = -1 is out of bounds"),
        ("files.avemo.weights", "0" * 10, r"files\['avemo.weights'\] is not a sha256"),
        ("labels", ["sad", "happy"], r"labels = .* are not avemo's labels"),
        ("version", "1", r"version '1' is not an integer"),
    ],
)
def test_malformed_manifest_values_are_one_line_naming_the_key(models, key, value, match):
    def change(data):
        *parents, last = key.split(".") if not key.startswith("files.") else ("files", key[6:])
        for name in parents:
            data = data[name]
        if value is None:
            del data[last]
        else:
            data[last] = value

    edit_manifest(models, change)
    _one_line_error(models, match)


def test_unreadable_and_deeply_nested_manifests_are_one_line(models):
    (models / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000)
    _one_line_error(models, r"unreadable manifest \(RecursionError")
    (models / MANIFEST_FILE).write_bytes(b'{"format": "avemo-models", "x": "\xff"}')
    _one_line_error(models, r"unreadable manifest")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_model_file_is_one_line(models):
    (models / "parity.npz").chmod(0)
    _one_line_error(models, r"parity.npz: unreadable")
