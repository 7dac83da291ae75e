"""The TensorRT path under the review of issue 21 (item 6), through the TensorRT and pycuda TEST DOUBLES:
CUDA that cannot start, what a build holds and where it lets go, a backend that fails half-way, profiles
within an engine's batch limit, and engine builds from `avemo-export` on a chosen device and workspace."""

from __future__ import annotations

import gc
import json

import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.errors import AvemoError
from tests.conftest import build_with_double, make_checkpoint

BUILD_OBJECTS = {"Builder", "INetworkDefinition", "OnnxParser", "IBuilderConfig", "IHostMemory"}
TWO_GPUS = "NVIDIA GeForce RTX 4090:8.9:24576:0;NVIDIA H100 80GB HBM3:9.0:81920:0"


def _releases(events, kinds):
    return [(what, current) for kind, what, current in events if kind == "release" and what in kinds]


def test_auto_falls_back_to_onnx_runtime_where_cuda_cannot_start(trt_double):
    """cuInit fails (a container without NVIDIA's runtime): auto runs on ONNX Runtime and says why; trt is
    one clear line, not pycuda's own exception."""
    from avemo.runtime.backends import resolve_backend
    from avemo.runtime.recognizer import Recognizer

    manifest, _, _ = trt_double("10.3.0", "none")
    backend, precision, why = resolve_backend("auto", manifest)
    assert (backend, precision) == ("ort", "fp32") and "cuInit failed" in why
    with pytest.raises(AvemoError, match=r"CUDA cannot start \(cuInit failed: no CUDA-capable device"):
        resolve_backend("trt", manifest)
    with Recognizer(manifest.root, backend="auto") as recognizer:
        assert recognizer.backend == "ort" and "cuInit failed" in recognizer.backend_reason


def test_build_releases_its_objects_inside_the_context_before_the_parity_run(trt_double):
    manifest, tensorrt, _ = trt_double("10.3.0")
    tensorrt.EVENTS.clear()
    build_with_double(manifest, "fp32", ["a"])
    events = list(tensorrt.EVENTS)
    first_run = events.index(("create", "IExecutionContext", True))  # the parity run's engine
    released = _releases(events[:first_run], BUILD_OBJECTS)
    assert {what for what, _ in released} == BUILD_OBJECTS
    assert all(current for _, current in released)
    assert not _releases(events[first_run:], BUILD_OBJECTS)


def test_a_failed_build_releases_its_objects_inside_the_context_too(trt_double, monkeypatch):
    manifest, tensorrt, _ = trt_double("10.3.0")
    monkeypatch.setattr(tensorrt.Builder, "build_serialized_network", lambda self, network, config: None)
    tensorrt.EVENTS.clear()
    with pytest.raises(AvemoError, match="TensorRT could not build an engine") as failure:
        build_with_double(manifest, "fp32", ["a"])
    del failure  # the traceback (and the frames it holds) goes: nothing of the build may still be alive
    gc.collect()
    released = _releases(tensorrt.EVENTS, BUILD_OBJECTS - {"IHostMemory"})
    assert {what for what, _ in released} == BUILD_OBJECTS - {"IHostMemory"}
    assert all(current for _, current in released), released


def test_a_backend_that_fails_half_way_leaves_nothing_behind(trt_double, monkeypatch):
    """set_tensor_address refused after the shared activation area was reserved: no user is left in that
    area, its memory is freed, and the engine and context are released inside their CUDA context."""
    from avemo.runtime.backends.gpu import DeviceScratch
    from avemo.runtime.backends.trt import TrtBackend

    manifest, tensorrt, cuda = trt_double("10.3.0")
    build_with_double(manifest, "fp32", ["a"])
    gc.collect()
    in_use = dict(cuda.USED)
    scratch = DeviceScratch(0)
    monkeypatch.setattr(tensorrt.IExecutionContext, "set_tensor_address", lambda self, name, memory: False)
    tensorrt.EVENTS.clear()
    with pytest.raises(AvemoError, match="TensorRT has no tensor"):
        TrtBackend(manifest, "a", "fp32", scratch=scratch)
    gc.collect()
    assert scratch.users == [] and scratch.allocation is None
    assert cuda.USED == in_use  # buffers and the activation area: every byte back
    released = _releases(tensorrt.EVENTS, {"ICudaEngine", "IExecutionContext"})
    assert {what for what, _ in released} == {"ICudaEngine", "IExecutionContext"}
    assert all(current for _, current in released)


def test_profile_keeps_to_the_engine_batch_limit_and_the_engines_that_exist(trt_double):
    """An Orin Nano's engines take 4 clips: batch 16 is skipped and said, not a crash that writes nothing;
    fp16 without engines is skipped and said (what the Jetson profiling script meets)."""
    from avemo.runtime.profile.cases import run_profile
    from avemo.runtime.profile.report import markdown

    manifest, _, _ = trt_double("10.3.0")
    build_with_double(manifest, "fp32")
    result = run_profile(
        manifest.root, ["trt"], ["fp32", "fp16"], ["a"], [1, 16], [0.5], iters=2, rounds=1, warmup=0, progress=False
    )
    assert [(c["backend"], c["precision"], c["batch"]) for c in result["cases"]] == [("trt", "fp32", 1)]
    reasons = {(s["precision"], s.get("batch")): s["reason"] for s in result["skipped"]}
    assert "over the engine's limit of 4 clips" in reasons["fp32", 16]
    assert reasons["fp16", None].startswith("no fp16 engines for NVIDIA Jetson Orin Nano")
    assert "Skipped trt fp32 at batch 16 (A): over the engine's limit" in markdown(result)


def test_export_builds_engines_on_the_device_and_with_the_workspace_given(trt_double, micro_config, tmp_path):
    trt_double("10.3.0", TWO_GPUS)
    ckpt, _ = make_checkpoint(tmp_path / "audio.pt", micro_config, "audio")
    out = tmp_path / "exported"
    args = ["export", str(ckpt), "--out", str(out), "--device", "1", "--workspace", "256"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (engine,) = (out / "engines").glob("*/avemo_a_fp32*.engine")
    assert "sm90" in engine.parent.name  # the H100, device 1
    plan = json.loads(engine.read_bytes().split(b"\n", 1)[1])
    assert plan["workspace_bytes"] == 256 << 20
