"""Running TensorRT engines (TrtBackend, the Recognizer on TensorRT, resolution), with the doubles in tests/fakes/.

The doubles are not TensorRT; what each enforces is in its header (tests/fakes) and docs/TESTING.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.errors import AvemoError
from avemo.runtime.backends.ort import OrtBackend
from avemo.runtime.backends.parity import sample_inputs
from tests.conftest import DISCRETE, FAKES, TWO_GPUS, assert_close
from tests.conftest import build_with_double as _build

ROOT = FAKES.parents[1]


def test_engines_answer_as_onnx_runtime_does_through_buffers_and_streams(trt_double):
    from avemo.runtime.backends.trt import TrtBackend

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32")
    for modality in manifest.modalities:
        ort = OrtBackend(manifest.graph_path(modality, "fp32"))
        with TrtBackend(manifest, modality, "fp32") as engine:
            for batch, seconds, seed in ((1, 1.0, 1), (3, 4.0, 2)):
                inputs = sample_inputs(manifest.features, modality, batch, seconds, seed)
                assert_close(engine.infer(inputs), ort.infer(inputs))


def test_clips_shorter_than_the_profile_are_padded_exactly_and_longer_ones_refused(trt_double):
    """Item 1: one face frame and a few audio frames run (padded up to the profile minimum)."""
    from avemo.runtime.backends.trt import TrtBackend

    manifest, _, _ = trt_double("10.3.0")
    _build(manifest, "fp32", ["av"])
    lo = manifest.data["profiles"]
    assert lo["face_frames"][0] == 1 and lo["audio_frames"][0] == 8
    rng = np.random.default_rng(0)
    size = manifest.features.face_size
    short = {
        "audio_feats": rng.normal(0, 3, (1, 5, 240)).astype(np.float32),  # 50 ms: below the profile's 8 frames
        "audio_lengths": np.array([5]),
        "faces": rng.integers(0, 256, (1, 1, 3, size, size), dtype=np.uint8),  # a single face crop
        "face_lengths": np.array([1]),
    }
    with TrtBackend(manifest, "av", "fp32") as engine:
        assert_close(engine.infer(short), OrtBackend(manifest.graph_path("av")).infer(short))
        too_long = dict(short, faces=np.zeros((1, lo["face_frames"][2] + 1, 3, size, size), np.uint8))
        with pytest.raises(
            AvemoError, match=r"faces: 91 frames, more than the engine's profile takes \(90\).*--window"
        ):
            engine.infer(too_long)


def test_recognizer_closes_engines_before_the_context_and_frees_every_byte(trt_double, tmp_path):
    """Item 2 (and 8): one primary context, one shared activation area, everything released by close()."""
    from avemo.runtime.media.sample import write_media
    from avemo.runtime.recognizer import Recognizer

    manifest, tensorrt, cuda = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32")
    with Recognizer(manifest.root, backend="trt") as recognizer:
        assert recognizer.backend == "trt" and recognizer.precision == "fp32"
        engines = list(recognizer.backends.values())
        scratch = engines[0].scratch
        assert all(e.scratch is scratch for e in engines)
        assert scratch.size == max(e.device_memory for e in engines)  # the largest, not the sum
        assert cuda.USED[0] == scratch.size + sum(e.io_bytes for e in engines)
        result = recognizer.recognize(write_media(tmp_path / "clip.mp4", seconds=2.0))
        assert result.backend == "trt" and result.modality == "av"
    assert cuda.USED[0] == 0 and tensorrt.LATE_RELEASES == []
    with pytest.raises(AvemoError, match="closed"):
        engines[0].infer(sample_inputs(manifest.features, "a", 1, 1.0, 0))
    recognizer.close()  # twice is fine
    assert len(tensorrt.LOGGERS) == 1  # item 11: one TensorRT logger per process


def test_integrated_gpu_uses_mapped_memory_without_device_copies(trt_double):
    """Item 8: on a Jetson the inputs are not held twice (mapped page-locked memory, zero-copy)."""
    from avemo.runtime.backends.trt import TrtBackend

    manifest, _, cuda = trt_double("10.3.0")  # the double's default: Jetson Orin Nano, integrated
    _build(manifest, "fp32", ["v"])
    with TrtBackend(manifest, "v", "fp32") as engine:
        assert engine.io_bytes == 0 and cuda.USED[0] == engine.device_memory
        inputs = sample_inputs(manifest.features, "v", 2, 2.0, 3)
        assert_close(engine.infer(inputs), OrtBackend(manifest.graph_path("v")).infer(inputs))


def test_close_from_another_thread_waits_for_the_call_in_flight(trt_double):
    from avemo.runtime.backends.trt import TrtBackend

    manifest, tensorrt, _ = trt_double("10.3.0")
    _build(manifest, "fp32", ["a"])
    engine = TrtBackend(manifest, "a", "fp32")
    inputs = sample_inputs(manifest.features, "a", 2, 2.0, 4)
    outcomes: list[str] = []

    def work() -> None:
        for _ in range(50):
            try:
                engine.infer(inputs)
                outcomes.append("ok")
            except AvemoError as exc:
                outcomes.append(str(exc))

    worker = threading.Thread(target=work)
    worker.start()
    engine.close()
    worker.join()
    closed = "avemo_a_fp32.engine: the backend is closed"
    assert set(outcomes) <= {"ok", closed} and outcomes[-1] == closed
    assert tensorrt.LATE_RELEASES == []


def test_a_recognizer_left_open_at_exit_is_closed_before_the_context_goes(trt_double, tmp_path):
    """Item 2: without close(), the engines are released before the CUDA context at interpreter exit."""
    manifest, _, _ = trt_double("10.3.0")
    _build(manifest, "fp32")
    script = (
        "import atexit, tensorrt, pycuda.driver as cuda\n"
        "atexit.register(lambda: print('LATE', tensorrt.LATE_RELEASES, 'USED', dict(cuda.USED)))\n"
        "from avemo.runtime.recognizer import Recognizer\n"
        f"r = Recognizer({str(manifest.root)!r}, backend='trt')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LATE [] USED {0: 0}" in out.stdout


def test_device_option_builds_and_runs_on_that_gpu(trt_double):
    """Item 3: --device 1 builds on GPU 1 (not GPU 0 tagged with GPU 1's name)."""
    manifest, _, _ = trt_double("10.3.0", TWO_GPUS)
    result = CliRunner().invoke(main, ["build", str(manifest.root), "--precision", "fp32", "--device", "1"])
    assert result.exit_code == 0, result.output
    folder = manifest.root / "engines" / "nvidia-h100-80gb-hbm3-sm90-trt10.3.0"
    plan = (folder / "avemo_av_fp32.engine").read_bytes()
    assert json.loads(plan.split(b"\n", 1)[1])["device"]["compute_capability"] == [9, 0]  # built on GPU 1
    assert "a Recognizer holds" in result.output and "MiB" in result.output
    from avemo.runtime.recognizer import Recognizer

    with pytest.raises(AvemoError, match="no fp16/int8/fp32 engines for NVIDIA GeForce RTX 4090"):
        Recognizer(manifest.root, backend="trt", device_id=0)
    with Recognizer(manifest.root, backend="trt", device_id=1) as on_h100:
        assert "H100" in on_h100.backend_reason
    bad = CliRunner().invoke(main, ["build", str(manifest.root), "--device", "2"])
    assert bad.exit_code == 1 and "this machine has 2 CUDA device(s)" in bad.output


def test_dla_option_is_gone():
    """Item 4: DLA engines need fixed shapes and their own files; the option is removed (README says why)."""
    result = CliRunner().invoke(main, ["build", "--help"])
    assert result.exit_code == 0 and "--dla" not in result.output
    assert "DLA" in (ROOT / "README.md").read_text()


def test_auto_backend_runs_the_engines_that_exist_and_says_which(trt_double, tmp_path):
    """Item 11: `avemo build` makes fp16 engines; `--backend auto` without --precision runs them."""
    manifest, _, _ = trt_double("10.3.0")
    from avemo.runtime.media.sample import write_media
    from avemo.runtime.recognizer import Recognizer

    with Recognizer(manifest.root, backend="auto") as before:
        assert before.backend == "ort" and "no fp16/int8/fp32 engines" in before.backend_reason
    result = CliRunner().invoke(main, ["build", str(manifest.root)])  # fp16 by default
    assert result.exit_code == 0, result.output
    clip = write_media(tmp_path / "clip.mp4", seconds=2.0)
    out = CliRunner().invoke(main, ["infer", str(clip), "--models", str(manifest.root)])
    assert out.exit_code == 0, out.output
    assert "backend: TensorRT fp16 engines for NVIDIA Jetson Orin Nano" in out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["backend"] == "trt"
    reference = CliRunner().invoke(main, ["infer", str(clip), "--models", str(manifest.root), "--backend", "ort"])
    ort_line = json.loads(reference.stdout.strip().splitlines()[-1])
    assert max(abs(line["probs"][k] - ort_line["probs"][k]) for k in line["probs"]) < 2e-2  # fp16 vs fp32


def test_timed_backend_events_bracket_the_transfers_not_the_host_staging(trt_double, monkeypatch):
    """Item 9: the H2D event is recorded after the inputs are staged in page-locked memory."""
    import time

    from avemo.runtime.backends import trt
    from avemo.runtime.backends.trt import TrtBackend

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32", ["a"])
    staged_at: list[float] = []
    write = trt.write_padded
    monkeypatch.setattr(trt, "write_padded", lambda out, a: (write(out, a), staged_at.append(time.perf_counter())))
    with TrtBackend(manifest, "a", "fp32", timed=True) as engine:
        engine.infer(sample_inputs(manifest.features, "a", 2, 2.0, 5))
        assert engine.events[0].at > max(staged_at)
        assert set(engine.last_phases_ms) == {"h2d", "compute", "d2h"}
        assert all(v >= 0 for v in engine.last_phases_ms.values())
    with TrtBackend(manifest, "a", "fp32") as untimed:
        untimed.infer(sample_inputs(manifest.features, "a", 1, 1.0, 6))
        assert untimed.last_phases_ms == {}


def test_missing_tensorrt_says_how_to_install(monkeypatch):
    from avemo.runtime.backends.trt import current_device

    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(AvemoError, match=r"pip install 'avemo\[trt\]'"):
        current_device()


def test_batch_limit_is_chosen_for_the_device_and_respected(trt_double, tmp_path):
    """Item 8: a shared-memory 8-GiB GPU gets engines for 4 clips per call (buffers sized so), a 24-GB one 16;
    the Recognizer splits larger batches; --max-batch overrides."""
    from avemo.runtime.backends.trt import TrtBackend
    from avemo.runtime.recognizer import ClipInput, Recognizer

    manifest, _, _ = trt_double("10.3.0")  # Jetson Orin Nano, 8 GiB shared
    (av,) = _build(manifest, "fp32", ["av"])
    meta = json.loads(av.with_suffix(".json").read_text())
    assert meta["max_batch"] == 4 and meta["profiles"][1]["face_lengths"] == [[1], [4], [4]]
    size = manifest.features.face_size
    with TrtBackend(manifest, "av", "fp32") as engine:
        assert engine.buffers["faces"].host.nbytes == 4 * 90 * 3 * size * size  # uint8
        with pytest.raises(AvemoError, match="5 clips per batch, more than the engine's profile takes"):
            engine.infer(sample_inputs(manifest.features, "av", 5, 1.0, 1))
    _build(manifest, "fp32", ["a", "v"])
    rng = np.random.default_rng(2)
    clips = [
        ClipInput(
            rng.normal(0, 3, (50 + 10 * i, 240)).astype(np.float32), rng.integers(0, 256, (2, 3, size, size), np.uint8)
        )
        for i in range(6)
    ]
    with Recognizer(manifest.root, backend="trt") as trt, Recognizer(manifest.root, backend="ort") as ort:
        got = [list(r.probs.values()) for r in trt.infer(clips)]
        want = [list(r.probs.values()) for r in ort.infer(clips)]
        assert {r.timings_ms["batch"] for r in trt.infer(clips)} == {4, 2}
    assert_close(np.array(got), np.array(want))
    result = CliRunner().invoke(main, ["build", str(manifest.root), "--precision", "fp32", "--max-batch", "2"])
    assert result.exit_code == 0 and "up to 2 clips per call" in result.output, result.output
    assert json.loads(av.with_suffix(".json").read_text())["max_batch"] == 2


def test_discrete_gpu_keeps_the_full_batch(trt_double):
    manifest, _, _ = trt_double("11.1.0", DISCRETE)
    (path,) = _build(manifest, "fp32", ["a"])
    assert json.loads(path.with_suffix(".json").read_text())["max_batch"] == 16


def test_auto_falls_back_to_onnx_runtime_where_the_gpu_does_not_answer(trt_double):
    from avemo.runtime.backends import resolve_backend

    manifest, _, _ = trt_double("10.3.0")
    backend, precision, why = resolve_backend("auto", manifest, None, device_id=3)  # the double has one GPU
    assert (backend, precision) == ("ort", "fp32") and "no usable GPU" in why and "--device 3" in why
    with pytest.raises(AvemoError, match="this machine has 1 CUDA device"):
        resolve_backend("trt", manifest, None, device_id=3)


def test_long_clips_are_cut_alike_on_both_backends(trt_double):
    """Item 1: a 35-s clip (past the 30-s profile) gives the same answer on TensorRT as on ONNX Runtime."""
    from avemo.runtime.recognizer import Recognizer
    from tests.conftest import long_clip_features

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32")
    feats = long_clip_features(manifest.features)
    with Recognizer(manifest.root, backend="trt") as trt, Recognizer(manifest.root, backend="ort") as ort:
        on_trt, on_ort = (r.recognize_features(feats, "clip", (None, None), 0.0) for r in (trt, ort))
    assert on_trt.backend == "trt" and on_ort.backend == "ort"
    assert_close(np.array(list(on_trt.probs.values())), np.array(list(on_ort.probs.values())))
    assert on_trt.modality == on_ort.modality == "av"
    assert "35.0 s is longer than the 30 s the model takes at once: recognised in 2 windows" in on_trt.notes[0]
