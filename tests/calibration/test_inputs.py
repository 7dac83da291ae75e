"""`avemo calibrate` refuses bad clip lists and keep patterns in one line, before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from avemo.cli import main


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


def test_a_full_disk_is_one_line_and_leaves_the_model_as_it_was(models, tiny_cache, tmp_path):
    from avemo.io import tree_hashes
    from tests.conftest import FAULTS

    before = tree_hashes(models)
    env = {**os.environ, "PYTHONPATH": str(FAULTS), "AVEMO_FULL_DISK": "*.onnx*"}
    command = [str(Path(sys.executable).parent / "avemo"), "calibrate", str(models), "--data", str(tiny_cache)]
    run = subprocess.run([*command, "--samples", "8"], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines()[-1].endswith(": cannot write (No space left on device)"), run.stderr
    assert tree_hashes(models) == before and sorted(os.listdir(tmp_path)) == ["models"]  # no staging left
