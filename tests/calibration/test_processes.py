"""`avemo calibrate` quantizes in a child process: killing calibrate takes that child with it."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import kill_leaves_no_orphans


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_calibrate_takes_its_children_with_it(colearn_export, tiny_cache, tmp_path, sig):
    models = tmp_path / "models"
    shutil.copytree(colearn_export[0], models)
    command = [str(Path(sys.executable).parent / "avemo"), "calibrate", str(models), "--data", str(tiny_cache)]
    kill_leaves_no_orphans([*command, "--samples", "8"], sig, workers=1)
    assert (models / "manifest.json").is_file()
