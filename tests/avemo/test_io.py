"""A model folder replaced as a whole: a kill after any rename leaves the old or the new one; --force cleans up."""

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
from avemo.io import recover_tree, sha256_file
from avemo.runtime.models.manifest import load_manifest
from tests.conftest import FAULTS, edit_manifest

REPLACE = """
import errno, json, shutil, sys
from pathlib import Path
import avemo.io as io
from avemo.runtime.models.manifest import write_manifest
target, source, swap = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if swap == "fallback":  # a file system without RENAME_EXCHANGE (NFS answers EINVAL)
    def exchange(a, b):
        raise OSError(errno.EINVAL, "Invalid argument")
    io.exchange = exchange
staging = io.new_tree(target)
shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
write_manifest(staging, json.loads((source / "manifest.json").read_text()))
io.replace_tree(staging, target)
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

    edit_manifest(out, change)
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
