"""`avemo train` / `study` take the cache's preset; a disagreeing --preset is refused; --nproc errors are one line."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.config import PRESETS, to_dict
from avemo.contract import CACHE_META_FILE
from avemo.errors import AvemoError
from avemo.train.cache import preset_for_cache, read_meta


def test_the_cache_names_its_preset_and_a_disagreeing_one_is_refused_naming_both(tiny_cache):
    name, config = preset_for_cache(tiny_cache)
    assert name == "tiny" and config.features == read_meta(tiny_cache) and config.d_model == PRESETS["tiny"].d_model
    assert preset_for_cache(tiny_cache, "tiny")[0] == "tiny"
    with pytest.raises(AvemoError, match=r"--preset paper does not fit .*made for --preset tiny.*face_size: 48 vs 128"):
        preset_for_cache(tiny_cache, "paper")


def test_a_cache_made_with_another_face_detector_still_fits_its_preset_and_keeps_its_detector(tiny_cache, tmp_path):
    cache = tmp_path / "haar"
    shutil.copytree(tiny_cache, cache)
    meta = json.loads((cache / CACHE_META_FILE).read_text())
    haar = dataclasses.replace(read_meta(tiny_cache), face_detector="haar", face_margin=0.2, face_detect_side=480)
    (cache / CACHE_META_FILE).write_text(json.dumps({**meta, "features": to_dict(haar)}))
    name, config = preset_for_cache(cache)
    assert name == "tiny" and config.features.face_detector == "haar"  # the model is served with the cache's crops
    odd = dataclasses.replace(haar, fps=5.0)
    (cache / CACHE_META_FILE).write_text(json.dumps({**meta, "features": to_dict(odd)}))
    with pytest.raises(AvemoError, match=r"fit no preset .*fps: 5.0 vs 3.0"):
        preset_for_cache(cache)


def test_train_without_preset_uses_the_caches_and_says_so_and_a_moved_run_finds_its_cache(
    tiny_cache, tmp_path, monkeypatch
):
    runner = CliRunner()
    monkeypatch.chdir(tiny_cache.parent)  # the cache given relative to where training runs
    args = ["train", "--data", tiny_cache.name, "--regime", "audio", "--epochs", "1", "--quiet"]
    done = runner.invoke(main, [*args, "--out", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    assert "preset tiny (the one" in done.output and (tmp_path / "run" / "best.pt").exists()
    (tmp_path / "elsewhere").mkdir()
    moved = (tmp_path / "run").rename(tmp_path / "elsewhere" / "run")
    monkeypatch.chdir(tmp_path / "elsewhere")
    done = runner.invoke(main, ["eval", "run", "--split", "valid"])
    assert done.exit_code == 0, done.output
    assert moved.exists() and "mF1" in done.output
    # progress over runs x modalities (its last frame depends on tqdm's refresh timing: not asserted)
    assert "eval valid:" in done.stderr and "/1 [" in done.stderr and "run/s" in done.stderr
    args[2] = str(tiny_cache)
    refused = runner.invoke(main, [*args, "--preset", "paper", "--out", str(tmp_path / "paper")])
    assert refused.exit_code == 1 and "--preset paper does not fit" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "paper").exists()


def test_study_refuses_a_preset_its_cache_was_not_made_for(tiny_cache, tmp_path):
    done = CliRunner().invoke(main, ["study", "--data", str(tiny_cache), "--preset", "paper", "--out", str(tmp_path)])
    assert done.exit_code == 1 and "made for --preset tiny" in done.output


def test_nproc_failure_in_the_processes_is_one_clean_line(tiny_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    (cache / "valid" / "index.npz").unlink()  # each training process fails on it, after the launch
    command = [str(Path(sys.executable).parent / "avemo"), "train", "--data", str(cache), "--regime", "audio",
               "--epochs", "1", "--nproc", "2", "--quiet", "--out", str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {cache}/valid: split 'valid' is missing from the cache (was it packed?)"], done.stderr
    assert "ChildFailedError" not in done.stderr and "Traceback" not in done.stderr
