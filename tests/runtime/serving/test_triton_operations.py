"""`avemo triton-serve` and `avemo export-triton --backend python` as an operator meets them: processes
that die, a server killed with its launcher, a model that fails to load, avemo_media's sizing and limit.

The server tests are skipped, with the reason, where the nvidia-pytriton wheel is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from avemo.cli import main
from avemo.errors import AvemoError
from avemo.process import children, running
from avemo.runtime.serving.repository import export_triton
from avemo.runtime.serving.server import free_port, stubs_of
from tests.runtime.serving.test_triton_server import model_config_pb2, needs_server


def test_media_instances_share_out_the_cores(colearn_export, tmp_path):
    result = CliRunner().invoke(
        main, ["export-triton", str(colearn_export[0]), "--out", str(tmp_path / "repo"), "--backend", "python",
               "--media-instances", "3", "--instances", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    media, graph = (
        text_format.Parse((tmp_path / "repo" / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        for name in ("avemo_media", "avemo_a")
    )
    assert media.instance_group[0].count == 3
    assert media.parameters["AVEMO_THREADS"].string_value == str(max(1, len(os.sched_getaffinity(0)) // 3))
    assert media.parameters["AVEMO_MAX_SECONDS"].string_value == "600"
    bad = CliRunner().invoke(
        main, ["export-triton", str(colearn_export[0]), "--out", str(tmp_path / "repo2"), "--backend", "python",
               "--media-max-seconds", "-5"],
    )  # fmt: skip
    assert bad.exit_code == 1 and "--media-max-seconds -5.0: give a positive number" in bad.output
    assert graph.instance_group[0].count == 2 and "AVEMO_THREADS" not in graph.parameters


def test_media_longer_than_the_limit_is_refused(colearn_export, tmp_path):
    import tempfile

    from avemo.runtime.media.sample import write_media
    from avemo.runtime.recognizer import Recognizer
    from avemo.runtime.serving.triton_model import MediaModel

    model = MediaModel()  # as initialize() makes it, without Triton
    model.recognizer, model.max_seconds = Recognizer(colearn_export[0]), 2.0
    model.scratch = tempfile.TemporaryDirectory()
    with pytest.raises(AvemoError, match=r"the request's media lasts 3\.\d s, over this server's limit of 2 s"):
        model.recognize(write_media(tmp_path / "long.mp4", seconds=3.0).read_bytes())
    short = write_media(tmp_path / "short.wav", seconds=1.5, video=False)
    assert model.recognize(short.read_bytes())["modality"] == "a"
    model.scratch.cleanup()


@pytest.fixture
def one_model_repo(colearn_export, tmp_path):
    """A repository with avemo_a only: a server on it starts in seconds."""
    export_triton(colearn_export[0], tmp_path / "full", backend="python", max_batch=8)
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(tmp_path / "full" / "avemo_a", repo / "avemo_a")
    return repo


def _serve(repo: Path, *extra: str) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "avemo"), "triton-serve", str(repo)]
    command += ["--grpc-port", str(free_port()), "--http-port", str(free_port()), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)


def _until_ready(process: subprocess.Popen) -> list[str]:
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("ready:"):
            return lines
    pytest.fail("".join(lines))


def _gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(running(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


@needs_server
def test_a_dead_model_process_stops_triton_serve_with_exit_3(one_model_repo):

    process = _serve(one_model_repo, "--log-file", str(one_model_repo.parent / "log"))
    try:
        _until_ready(process)
        (server,) = children(process.pid)
        (stub,) = stubs_of(server)
        os.kill(stub, signal.SIGKILL)  # as the OOM killer would
        assert process.wait(60) == 3
        rest = process.stderr.read()
        assert "avemo_a: the model's Python process died" in rest and "supervisor" in rest
        assert _gone([server], 5)
    finally:
        if process.poll() is None:
            process.kill()


@needs_server
def test_killing_triton_serve_takes_the_server_with_it(one_model_repo):

    process = _serve(one_model_repo, "--log-file", str(one_model_repo.parent / "log"))
    try:
        _until_ready(process)
        (server,) = children(process.pid)
        stubs = list(stubs_of(server))
        assert stubs
        process.kill()
        process.wait(10)
        assert _gone([server, *stubs], 30), {pid: running(pid) for pid in [server, *stubs]}
    finally:
        if process.poll() is None:
            process.kill()


@needs_server
def test_a_model_that_fails_to_load_is_named_with_its_reason(one_model_repo):
    weights = one_model_repo / "avemo_a" / "1" / "models" / "avemo.weights"
    weights.write_bytes(weights.read_bytes()[:-8])
    process = _serve(one_model_repo)
    try:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 1
        assert "avemo_a: Internal: AvemoError: " in err and "sha256 does not match" in err, err
        log = Path(err.rsplit("(whole log: ", 1)[1].split(")")[0])
        assert "failed to load 'avemo_a'" in log.read_text()
        log.unlink()
    finally:
        if process.poll() is None:
            process.kill()
