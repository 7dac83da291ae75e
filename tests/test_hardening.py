"""Issue 23: hostile manifests, kills at every rename of a model replacement, and the other hardening items."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from itertools import count
from pathlib import Path

import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.contract import MANIFEST_FILE
from avemo.errors import AvemoError
from avemo.io import recover_tree, sha256_file
from avemo.runtime.models.manifest import load_manifest

FAULTS = Path(__file__).parent / "faults"


@pytest.fixture
def models(colearn_export, tmp_path):
    """A private copy of the exported tiny model."""
    target = tmp_path / "models"
    shutil.copytree(colearn_export[0], target)
    return target


def _edit(models: Path, change) -> None:
    data = json.loads((models / MANIFEST_FILE).read_text())
    change(data)
    (models / MANIFEST_FILE).write_text(json.dumps(data))


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
        _edit(copy, lambda d, rel=rel: d["files"].__setitem__(rel, digest))
        _one_line_error(copy, r"files\[.*secret.txt'\] = .* leaves the model folder")


def test_a_symlink_leaving_the_folder_is_refused(models, tmp_path):
    secret, digest = _outside_file(tmp_path)
    (models / "notes.txt").symlink_to(secret)
    _edit(models, lambda d: d["files"].__setitem__("notes.txt", digest))
    _one_line_error(models, r"files\['notes.txt'\] = 'notes.txt' is a symlink leaving the model folder")
    (models / "notes.txt").unlink()
    (models / "notes.txt").symlink_to("fp16/avemo.weights")  # inside: allowed
    _edit(models, lambda d: d["files"].__setitem__("notes.txt", sha256_file(models / "fp16/avemo.weights")))
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

    _edit(models, change)
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


# What `avemo-export --force` and `avemo calibrate` do once their new tree is complete: the same library calls.
REPLACE = """
import errno, json, shutil, sys
from pathlib import Path
import avemo.io as io
target, source, swap = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if swap == "fallback":  # a file system without RENAME_EXCHANGE (NFS answers EINVAL)
    def exchange(a, b):
        raise OSError(errno.EINVAL, "Invalid argument")
    io.exchange = exchange
staging = io.new_tree(target)
shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
io.install_tree(staging, target, "manifest.json", json.loads((source / "manifest.json").read_text()))
"""


def _another_model(models: Path, out: Path) -> Path:
    """A second complete model that differs from ``models`` both ways: fp16 gone, a listed file added."""
    shutil.copytree(models, out)
    shutil.rmtree(out / "fp16")
    (out / "notes").mkdir()
    (out / "notes" / "extra.txt").write_text("new model\n")

    def change(data):
        data["precisions"].pop("fp16")
        data["parity"].pop("fp16")
        data["files"] = {k: v for k, v in data["files"].items() if not k.startswith("fp16/")}
        data["files"]["notes/extra.txt"] = sha256_file(out / "notes" / "extra.txt")

    _edit(out, change)
    return out


@pytest.mark.parametrize("swap", ["exchange", "fallback"])
def test_a_kill_after_any_rename_leaves_the_old_or_the_new_model(models, tmp_path, swap):
    new = _another_model(models, tmp_path / "new")
    manifests = {
        "old": json.loads((models / MANIFEST_FILE).read_text()),
        "new": json.loads((new / MANIFEST_FILE).read_text()),
    }
    seen = []
    for n in count(1):
        target = tmp_path / f"kill{n}" / "models"
        shutil.copytree(models, target)
        env = {**os.environ, "PYTHONPATH": str(FAULTS), "AVEMO_KILL_AFTER_RENAME": str(n)}
        run = subprocess.run([sys.executable, "-c", REPLACE, str(target), str(new), swap], env=env, timeout=120)
        if swap == "fallback" and not target.exists():
            recover_tree(target)  # killed between its two renames: the next run puts the old tree back first
            seen.append("recovered")
        result = CliRunner().invoke(main, ["verify", str(target)])
        assert result.exit_code == 0, f"killed after rename {n}: {result.output}"
        now = json.loads((target / MANIFEST_FILE).read_text())
        seen.append(next(name for name, data in manifests.items() if data == now))
        recover_tree(target)  # what the next run does first: nothing of a killed run is left beside the folder
        assert os.listdir(target.parent) == ["models"]
        if run.returncode == 0:
            break
        assert run.returncode == -9, run.returncode
    assert seen[-1] == "new" and "old" in seen and n >= 3, seen
    if swap == "fallback":
        assert "recovered" in seen


def test_export_force_replaces_the_whole_folder_and_cleans_what_kills_left(micro_config, tmp_path):
    from avemo.export.exporter import export_run
    from tests.conftest import make_checkpoint

    ckpt, _ = make_checkpoint(tmp_path / "audio.pt", micro_config, "audio")
    out = tmp_path / "models"
    (out / "fp16").mkdir(parents=True)
    (out / "fp16" / "avemo_v.onnx").write_bytes(b"another model's graph")
    (out / MANIFEST_FILE).write_text("{}")
    stale = [tmp_path / ".models.avemo-new-999999999", tmp_path / ".models.avemo-old-999999999"]
    for path in stale:  # left by runs killed mid-way (no such process any more)
        (path / "fp16").mkdir(parents=True)
    export_run(ckpt, out, force=True, log=lambda *_: None)
    assert not (out / "fp16").exists() and sorted(os.listdir(tmp_path)) == ["audio.pt", "models"]
    assert load_manifest(out).modalities == ["a"]
    (tmp_path / "link").symlink_to(out)  # a folder reached through a link is replaced where it is
    export_run(ckpt, tmp_path / "link", log=lambda *_: None)
    assert (tmp_path / "link").is_symlink() and sorted(os.listdir(tmp_path)) == ["audio.pt", "link", "models"]


def test_calibrate_bad_clip_lists_and_keep_patterns_are_one_line(models, tiny_cache, tmp_path):
    clips = tmp_path / "clips.json"
    for text in ('{"clips": 3}', "3", '[{"id": 1}]', '{"other": []}'):
        clips.write_text(text)
        result = CliRunner().invoke(main, ["calibrate", str(models), "--data", str(tiny_cache), "--clips", str(clips)])
        assert result.exit_code == 1 and "not a clip list" in result.output, result.output
        assert "Traceback" not in result.output
    result = CliRunner().invoke(
        main, ["calibrate", str(models), "--data", str(tiny_cache), "--samples", "8", "--keep", "("]
    )
    assert result.exit_code == 1 and "--keep '(' is not a regular expression" in result.output, result.output
    assert sorted(os.listdir(tmp_path)) == ["clips.json", "models"]  # nothing staged
