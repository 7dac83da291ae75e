"""scripts/jetson/profile_on_jetson.sh with stand-ins for sudo, nvpmodel, jetson_clocks, tegrastats and Python.

The stand-ins only log how they were called; what is checked is who runs what and that the power mode
and clocks are restored.
"""

import os
import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "jetson" / "profile_on_jetson.sh"


def _tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(tmp_path: Path, python_exit: int = 0) -> tuple[int, list[str]]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _tool(bin_dir, "sudo", f'echo "sudo $*" >> {log}; AS_ROOT=1 "$@"')
    _tool(
        bin_dir,
        "nvpmodel",
        f'echo "nvpmodel $* root=${{AS_ROOT:-0}}" >> {log}; [ "$1" = -q ] && printf "NV Power Mode: 15W\\n2\\n"; true',
    )
    _tool(bin_dir, "jetson_clocks", f'echo "jetson_clocks $* root=${{AS_ROOT:-0}}" >> {log}')
    _tool(bin_dir, "tegrastats", f'echo "tegrastats $* root=${{AS_ROOT:-0}}" >> {log}')
    _tool(bin_dir, "venv-python", f'echo "python root=${{AS_ROOT:-0}} $*" >> {log}; exit {python_exit}')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "venv-python")}
    done = subprocess.run(["bash", str(SCRIPT), "models", str(tmp_path / "out")], env=env, capture_output=True)
    return done.returncode, log.read_text().splitlines()


def test_only_the_clock_tools_run_as_root_and_the_power_mode_comes_back(tmp_path):
    code, calls = _run(tmp_path)
    assert code == 0
    python = [c for c in calls if c.startswith("python")]
    assert python and python[0].startswith("python root=0")  # the virtualenv's Python, not under sudo
    assert all("root=1" in c for c in calls if c.split()[0] in ("nvpmodel", "jetson_clocks", "tegrastats"))
    ran = [c for c in calls if not c.startswith("sudo")]
    assert ran.index("nvpmodel -m 0 root=1") < ran.index(python[0]) < ran.index("nvpmodel -m 2 root=1")
    assert any(c.startswith("jetson_clocks --restore") for c in ran[ran.index(python[0]) :])


def test_power_mode_is_restored_after_a_failed_run(tmp_path):
    code, calls = _run(tmp_path, python_exit=3)
    assert code == 3
    assert calls[-1] == "nvpmodel -m 2 root=1"
