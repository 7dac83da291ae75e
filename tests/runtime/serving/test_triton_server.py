"""A real Triton server (the nvidia-pytriton wheel's tritonserver) serving the Python-backend repository.

Skipped, with the reason, where the wheel is not installed (it exists for Linux x86_64 only;
`make test` installs it there).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from avemo.cli import main
from avemo.errors import AvemoError
from avemo.runtime.backends.ort import OrtBackend
from avemo.runtime.backends.parity import sample_inputs
from avemo.runtime.serving.repository import export_triton
from avemo.runtime.serving.server import TritonServer, find_tritonserver, free_port

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'tritonclient[grpc]'")

try:
    find_tritonserver()
    NO_SERVER = ""
except AvemoError as exc:
    NO_SERVER = str(exc)
needs_server = pytest.mark.skipif(bool(NO_SERVER), reason=NO_SERVER)


def _probs_equal(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def repository(colearn_export, tmp_path_factory):
    models = colearn_export[0]
    repo = tmp_path_factory.mktemp("triton") / "repo"
    export_triton(models, repo, backend="python", max_batch=8, instances=1)
    return models, repo


@pytest.fixture(scope="module")
def server(repository):
    if NO_SERVER:
        pytest.skip(NO_SERVER)
    from avemo.runtime.serving.client import AvemoTritonClient

    with TritonServer(repository[1], grpc_port=free_port(), metrics_port=free_port()) as running:
        client = AvemoTritonClient(running.url)
        yield running, client
        client.close()


def test_python_repository_layout_and_configs(repository):
    models, repo = repository
    assert sorted(p.name for p in repo.iterdir()) == ["avemo_a", "avemo_av", "avemo_media", "avemo_v"]
    for name in ("avemo_a", "avemo_v", "avemo_av", "avemo_media"):
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.backend == "python" and config.name == name
        env = config.parameters["EXECUTION_ENV_PATH"].string_value
        assert Path(env, "bin").is_dir()
        assert config.parameters["AVEMO_BACKEND"].string_value == "auto"
        expected = "MediaModel" if name == "avemo_media" else "GraphModel"
        assert f"import {expected} as TritonPythonModel" in (repo / name / "1" / "model.py").read_text()
        # the models folder is copied, not hard-linked (ONNX refuses external data with two links)
        weights = repo / name / "1" / "models" / "avemo.weights"
        assert weights.stat().st_nlink == 1 and weights.read_bytes() == (models / "avemo.weights").read_bytes()
    media = text_format.Parse((repo / "avemo_media" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [(t.name, t.data_type) for t in media.input] == [("media", model_config_pb2.TYPE_UINT8)]
    assert [t.name for t in media.output] == ["probs", "modality", "notes", "result"]
    assert media.max_batch_size == 0
    # one avemo_media process per core by default, the cores shared out as threads
    cores = len(os.sched_getaffinity(0))
    assert [(g.count, g.kind) for g in media.instance_group] == [(cores, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert media.parameters["AVEMO_THREADS"].string_value == "1"


def test_python_env_must_be_an_environment(colearn_export, tmp_path):
    with pytest.raises(AvemoError, match="not a Python environment"):
        export_triton(colearn_export[0], tmp_path / "repo", backend="python", python_env=str(tmp_path))
    folders = export_triton(colearn_export[0], tmp_path / "repo2", backend="python", python_env="")
    assert "EXECUTION_ENV_PATH" not in (folders["a"] / "config.pbtxt").read_text()


def test_a_missing_server_says_how_to_get_one(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(
        AvemoError, match=r"pip install --no-deps nvidia-pytriton==0\.7\.0.*nvcr\.io/nvidia/tritonserver"
    ):
        find_tritonserver()
    result = CliRunner().invoke(main, ["triton-serve", str(tmp_path)])
    assert result.exit_code == 1 and "no Triton server here" in result.output


@needs_server
def test_every_model_loads(server):
    running, _ = server
    assert running.models() == {name: "READY" for name in ("avemo_a", "avemo_av", "avemo_media", "avemo_v")}


@needs_server
@pytest.mark.parametrize("modality", ["a", "v", "av"])
def test_graph_models_answer_as_onnx_runtime_does(server, repository, modality):
    _, client = server
    graph = OrtBackend(repository[0] / f"avemo_{modality}.onnx")
    from avemo.runtime.models.manifest import load_manifest

    features = load_manifest(repository[0]).features
    for batch, seconds, seed in ((1, 0.6, 1), (3, 2.0, 2)):
        inputs = sample_inputs(features, modality, batch, seconds, seed)
        _probs_equal(client.graph(modality, inputs), graph.infer(inputs))


@needs_server
def test_concurrent_requests_of_different_lengths_batch_exactly(server, repository):
    """The dynamic batcher hands requests of different lengths over together; padding them changes nothing."""
    _, client = server
    from avemo.runtime.models.manifest import load_manifest

    features = load_manifest(repository[0]).features
    graph = OrtBackend(repository[0] / "avemo_a.onnx")
    requests = [sample_inputs(features, "a", 1 + i % 2, 0.5 + 0.4 * i, seed=10 + i) for i in range(8)]
    answers: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(requests))

    def send(i: int) -> None:
        barrier.wait()
        answers[i] = client.graph("a", requests[i])

    def executions() -> int:
        return client.client.get_inference_statistics("avemo_a").model_stats[0].execution_count

    before = executions()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, inputs in enumerate(requests):
        _probs_equal(answers[i], graph.infer(inputs))
    # requests of different lengths ran together (allow_ragged_batch): fewer model executions than requests
    assert executions() - before < len(requests)


@needs_server
def test_media_model_equals_avemo_infer(server, repository, tmp_path):
    from avemo.runtime.media.sample import write_media

    _, client = server
    clip = write_media(tmp_path / "clip.mp4", seconds=3.0)
    result = CliRunner().invoke(main, ["infer", str(clip), "--models", str(repository[0])])
    assert result.exit_code == 0, result.output
    import json

    local = json.loads(result.stdout.strip().splitlines()[-1])
    served = client.media(clip.read_bytes())
    assert served["modality"] == local["modality"] == "av"
    _probs_equal(np.array(list(served["probs"].values())), np.array(list(local["probs"].values())))
    assert served["notes"] == local["notes"]
    assert served["result"]["frames_sampled"] == local["frames_sampled"]
    audio_only = write_media(tmp_path / "voice.wav", seconds=2.0, video=False)
    assert client.media(audio_only.read_bytes())["modality"] == "a"


@needs_server
def test_bad_requests_get_errors_and_the_server_keeps_serving(server, repository):
    from tritonclient.utils import InferenceServerException

    running, client = server
    from avemo.runtime.models.manifest import load_manifest

    features = load_manifest(repository[0]).features
    good = sample_inputs(features, "a", 2, 1.0, seed=3)
    with pytest.raises(InferenceServerException, match="cannot open media"):
        client.media(b"not a video" * 100)
    with pytest.raises(InferenceServerException, match="empty media"):
        client.media(b"")
    with pytest.raises(InferenceServerException, match=r"audio_lengths \[500, .*must lie in 1\.\.100"):
        client.graph("a", {**good, "audio_lengths": np.array([500, 50], np.int64)})
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        client.graph("a", {**good, "audio_feats": good["audio_feats"][:, :, :100].copy()})
    with pytest.raises(InferenceServerException, match="batch size does not match"):
        client.graph("a", {**good, "audio_lengths": good["audio_lengths"][:1]})
    assert running.running and client.client.is_server_live()
    _probs_equal(client.graph("a", good), OrtBackend(repository[0] / "avemo_a.onnx").infer(good))


@needs_server
def test_triton_serve_command_starts_and_stops_cleanly(repository, tmp_path):
    grpc, http = free_port(), free_port()
    command = [str(Path(sys.executable).parent / "avemo"), "triton-serve", str(repository[1])]
    command += ["--grpc-port", str(grpc), "--http-port", str(http)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if line.startswith("ready:"):
                break
        assert lines and lines[-1].startswith(f"ready: gRPC 127.0.0.1:{grpc}"), lines
        assert "avemo_media (READY)" in lines[-1]
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(60) == 0, rest
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()


def test_requests_merge_into_one_padded_batch_without_changing_answers(colearn_export):
    from avemo.runtime.models.manifest import load_manifest
    from avemo.runtime.serving.triton_model import check_request, merge_requests

    models = colearn_export[0]
    features = load_manifest(models).features
    graph = OrtBackend(models / "avemo_av.onnx")
    requests = [sample_inputs(features, "av", b, s, seed=20 + b) for b, s in ((1, 0.7), (2, 2.5), (1, 1.2))]
    assert [check_request(r, graph.input_specs) for r in requests] == [1, 2, 1]
    merged = merge_requests(requests)
    assert merged["audio_feats"].shape[:2] == (4, max(r["audio_feats"].shape[1] for r in requests))
    np.testing.assert_array_equal(merged["face_lengths"], np.concatenate([r["face_lengths"] for r in requests]))
    _probs_equal(graph.infer(merged), np.concatenate([graph.infer(r) for r in requests]))
    with pytest.raises(AvemoError, match="face_lengths"):
        check_request({**requests[0], "face_lengths": np.array([0])}, graph.input_specs)
    with pytest.raises(AvemoError, match="missing inputs"):
        check_request({"faces": requests[0]["faces"]}, graph.input_specs)


def _metric(running: TritonServer, series: str) -> float:
    """One series' value from the server's Prometheus text (0 when absent)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")]
    return sum(values)


@needs_server
def test_good_requests_log_nothing(server, repository, tmp_path):
    """Each output once logged a traceback (the Python backend names a used DLPack capsule wrongly)."""
    from avemo.runtime.media.sample import write_media

    running, client = server
    from avemo.runtime.models.manifest import load_manifest

    features = load_manifest(repository[0]).features
    before = running.log_file.stat().st_size
    for modality in ("a", "v", "av"):
        client.graph(modality, sample_inputs(features, modality, 2, 1.0, seed=5))
    client.media(write_media(tmp_path / "clip.mp4", seconds=1.0).read_bytes())
    time.sleep(0.5)  # the stubs write to the server's log unbuffered: anything would be there by now
    with running.log_file.open("rb") as log:
        log.seek(before)
        assert log.read().decode(errors="replace") == ""


@needs_server
def test_non_finite_features_are_refused_and_counted(server, repository):
    from tritonclient.utils import InferenceServerException

    running, client = server
    from avemo.runtime.models.manifest import load_manifest

    features = load_manifest(repository[0]).features
    audio = sample_inputs(features, "a", 3, 1.0, seed=6)
    faces = sample_inputs(features, "v", 2, 1.0, seed=7)
    series = 'avemo_request_failure{code="INVALID_ARG",model="avemo_%s"}'
    before = {m: _metric(running, series % m) for m in ("a", "v")}
    bad_audio = audio["audio_feats"].copy()
    bad_audio[1, 5, 7] = np.nan
    for modality, inputs, name, clips in (
        ("a", {**audio, "audio_feats": bad_audio}, "audio_feats", r"\[1\]"),
        ("a", {**audio, "audio_feats": np.full_like(bad_audio, -np.inf)}, "audio_feats", r"\[0, 1, 2\]"),
    ):
        with pytest.raises(InferenceServerException, match=rf"{name} holds NaN or Inf \(clips {clips}") as caught:
            client.graph(modality, inputs)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    # Faces are uint8 (nothing to be NaN): float faces, Inf included, are refused by Triton's own dtype check.
    bad_faces = faces["faces"].astype(np.float32)
    bad_faces[0, 0, 0, 0, 0] = np.inf
    with pytest.raises(InferenceServerException) as caught:
        client.graph("v", {**faces, "faces": bad_faces})
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "UINT8" in str(caught.value)
    # Triton's own counters call these successes (see _Failures); avemo's counter has them
    assert {m: _metric(running, series % m) - before[m] for m in ("a", "v")} == {"a": 2, "v": 0}
    assert _metric(running, 'nv_inference_request_success{model="avemo_a",version="1"}') > 0
    _probs_equal(client.graph("a", audio), OrtBackend(repository[0] / "avemo_a.onnx").infer(audio))


@needs_server
def test_perf_analyzer_input_data_drives_every_model(server, repository, tmp_path):
    """The JSON files, read as perf_analyzer reads them (b64 little-endian row-major, "shape" without the
    batch axis, dtypes from config.pbtxt, -b 1), are requests every model answers, as for the clip itself."""
    import base64
    import json

    import tritonclient.grpc as grpc

    from avemo.runtime.media.sample import write_media
    from avemo.runtime.serving.perf_data import main as write_perf_data

    _, client = server
    clip = write_media(tmp_path / "clip.mp4", seconds=2.0)
    write_perf_data([str(repository[0]), str(clip), "--out", str(tmp_path / "perf")])
    answers = {}
    for name in ("avemo_a", "avemo_v", "avemo_av", "avemo_media"):
        config = text_format.Parse((repository[1] / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        kinds = {t.name: model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_") for t in config.input}
        (entry,) = json.loads((tmp_path / "perf" / f"{name}.json").read_text())["data"]
        inputs = []
        for tensor_name, tensor in entry.items():
            dtype = {"FP32": "<f4", "INT64": "<i8", "UINT8": "u1"}[kinds[tensor_name]]
            array = np.frombuffer(base64.b64decode(tensor["content"]["b64"]), dtype).reshape(tensor["shape"])
            array = array[None] if config.max_batch_size else array
            inputs.append(grpc.InferInput(tensor_name, list(array.shape), kinds[tensor_name]))
            inputs[-1].set_data_from_numpy(array.astype(array.dtype.newbyteorder("=")))
        answers[name] = client.client.infer(name, inputs).as_numpy("probs").reshape(-1)
    assert all(np.isfinite(p).all() and p.shape == (6,) for p in answers.values())
    # the clip's features = what avemo_media makes of it; avemo_media answers `avemo infer`'s line: 4 decimals
    np.testing.assert_allclose(answers["avemo_av"], answers["avemo_media"], rtol=0, atol=5e-5 + 1e-6)
