"""`avemo calibrate` refuses bad clip lists and keep patterns in one line, before any work."""

from __future__ import annotations

import os

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
