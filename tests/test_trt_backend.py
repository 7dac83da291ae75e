"""The TensorRT builder and pycuda backend driven by FAKE tensorrt/pycuda modules (tests/fake_tensorrt.py).

These check our call sequence and buffer handling, not TensorRT itself; the
real-GPU test below skips unless tensorrt and pycuda are importable.
"""

import importlib.util
import sys

import numpy as np
import pytest

from avemo.errors import AvemoError
from avemo.runtime.manifest import load_manifest
from tests import fake_tensorrt as fake


@pytest.fixture
def fake_gpu(monkeypatch, colearn_export, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(colearn_export[0], models)
    fake.CALLS.clear()
    fake.MEMORY.clear()

    def install(version="10.3.0"):
        pycuda, driver = fake.make_pycuda()
        monkeypatch.setitem(sys.modules, "tensorrt", fake.make_tensorrt(version))
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
        return load_manifest(models)

    return install


def _calls(name):
    return [c for c in fake.CALLS if c[0] == name]


def test_build_on_trt10_sets_precision_flags_profiles_and_timing_cache(fake_gpu, tmp_path):
    from avemo.runtime.trt_backend import build_engine, current_device

    manifest = fake_gpu("10.3.0")
    device = current_device()
    cache = tmp_path / "timing.cache"
    path = build_engine(manifest, "av", "fp16", device, timing_cache=cache, log=lambda *_: None)
    assert path.read_bytes() == b"FAKE-ENGINE"
    assert path.parent.name == "fake-gpu-sm87-trt10.3.0" and path.with_suffix(".json").exists()
    assert _calls("parser.parse_from_file")[0][1].endswith("fp16/avemo_av.onnx")
    assert _calls("builder.create_network") == [("builder.create_network", 0)]
    assert _calls("config.set_flag") == [("config.set_flag", "FP16")]
    shapes = {c[1]: c[2:] for c in _calls("profile.set_shape")}
    assert set(shapes) == {"audio_feats", "audio_lengths", "faces", "face_lengths"}
    assert shapes["face_lengths"] == ((1,), (4,), (16,))
    assert cache.read_bytes() == b"TIMING-CACHE"


def test_build_on_trt11_is_strongly_typed_without_precision_flags(fake_gpu):
    from avemo.runtime.trt_backend import build_engine, current_device

    manifest = fake_gpu("11.0.0")
    build_engine(manifest, "a", "fp16", current_device(), log=lambda *_: None)
    assert _calls("builder.create_network") == [("builder.create_network", 1 << 5)]
    assert _calls("config.set_flag") == []


def test_backend_call_sequence_buffers_and_close(fake_gpu):
    from avemo.runtime.trt_backend import TrtBackend, build_engine, current_device

    manifest = fake_gpu("10.3.0")
    build_engine(manifest, "a", "fp32", current_device(), log=lambda *_: None)
    fake.CALLS.clear()
    backend = TrtBackend(manifest, "a", "fp32")
    assert {c[1] for c in _calls("context.set_tensor_address")} == {"audio_feats", "audio_lengths", "probs"}
    lengths = np.array([50, 20, 33], np.int64)
    probs = backend.infer({"audio_feats": np.zeros((3, 50, 240), np.float32), "audio_lengths": lengths})
    np.testing.assert_allclose(probs, lengths[:, None] / 1000 + np.arange(6)[None, :] / 100, rtol=1e-6)
    names = [c[0] for c in fake.CALLS]
    # Shapes are set before the launch, the stream is synchronised after it, and the context is pushed/popped.
    assert (
        names.index("context.set_input_shape")
        < names.index("context.execute_async_v3")
        < names.index("stream.synchronize")
    )
    assert _calls("context.execute_async_v3") == [("context.execute_async_v3", 42)]
    # make_context() leaves the new context current (pycuda), so it counts as a push.
    assert names.count("ctx.push") + names.count("device.make_context") == names.count("ctx.pop")
    with pytest.raises(AvemoError, match="outside the engine's profile"):
        backend.infer({"audio_feats": np.zeros((17, 50, 240), np.float32), "audio_lengths": np.ones(17, np.int64)})
    with backend:
        pass
    assert len(_calls("mem.free")) == 3 and fake.MEMORY == {} and _calls("ctx.detach")
    with pytest.raises(AvemoError, match="closed"):
        backend.infer({"audio_feats": np.zeros((1, 50, 240), np.float32), "audio_lengths": lengths[:1]})


def test_engine_from_another_gpu_is_refused_before_loading(fake_gpu):
    from avemo.runtime.engines import Device
    from avemo.runtime.trt_backend import TrtBackend, build_engine

    manifest = fake_gpu("10.3.0")
    build_engine(manifest, "a", "fp32", Device("Other GPU", (7, 5), "10.3.0"), log=lambda *_: None)
    with pytest.raises(AvemoError, match="no engine"):
        TrtBackend(manifest, "a", "fp32")  # this (fake) GPU has no engine of its own yet


def test_missing_tensorrt_says_how_to_install(monkeypatch):
    from avemo.runtime.trt_backend import current_device

    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(AvemoError, match=r"pip install 'avemo\[trt\]'"):
        current_device()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None,
    reason="real TensorRT + pycuda are not installed (no GPU on this machine)",
)
def test_real_gpu_device_is_described():
    from avemo.runtime.trt_backend import current_device

    assert current_device().compute_capability[0] >= 5


def test_avemo_build_cli_with_fake_tensorrt(fake_gpu):
    from click.testing import CliRunner

    from avemo.cli import main

    manifest = fake_gpu("10.3.0")
    result = CliRunner().invoke(main, ["build", str(manifest.root), "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    assert "Fake GPU (sm87, TensorRT 10.3.0)" in result.output
    engines = sorted(p.name for p in (manifest.root / "engines").rglob("*.engine"))
    assert engines == ["avemo_a_fp16.engine", "avemo_av_fp16.engine", "avemo_v_fp16.engine"]


def test_avemo_build_without_tensorrt_is_one_line(colearn_export, monkeypatch):
    from click.testing import CliRunner

    from avemo.cli import main

    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    result = CliRunner().invoke(main, ["build", str(colearn_export[0])])
    assert result.exit_code == 1 and "avemo[trt]" in result.output and "Traceback" not in result.output


def test_type_check_catches_a_misspelt_tensorrt_call(tmp_path):
    """`make test` type-checks runtime/trt_backend.py against the TensorRT 10.13 stubs; prove that check can fail."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stubs = root / ".venv" / "trt-stubs"
    if not (stubs / "tensorrt" / "__init__.pyi").exists():
        pytest.skip("TensorRT stubs not installed: run `make test` (scripts/typecheck_trt.sh installs them)")
    source = (root / "runtime" / "trt_backend.py").read_text()
    assert "execute_async_v3(" in source
    bad = tmp_path / "trt_backend_bad.py"
    bad.write_text(source.replace("execute_async_v3(", "execute_async_v4("))
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(root / "setup.cfg"),
        "--check-untyped-defs",
        "--ignore-missing-imports",
        "--follow-imports=silent",
        "--disable-error-code=arg-type",
        str(bad),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env={"MYPYPATH": str(stubs), "PATH": ""}, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert '"IExecutionContext" has no attribute "execute_async_v4"' in out.stdout


def test_export_goes_on_to_build_engines_where_tensorrt_imports(fake_gpu, micro_config, tmp_path, monkeypatch):
    import importlib.machinery

    from click.testing import CliRunner

    from avemo.cli import main
    from tests.conftest import make_checkpoint

    fake_gpu("10.3.0")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: importlib.machinery.ModuleSpec(name, None) if name == "tensorrt" else real_find_spec(name, *a),
    )
    ckpt, _ = make_checkpoint(tmp_path / "a.pt", micro_config, "audio")
    result = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "engines" / "fake-gpu-sm87-trt10.3.0" / "avemo_a_fp32.engine").exists()


def test_recognizer_auto_backend_uses_engines_for_this_gpu(fake_gpu, monkeypatch, tmp_path):
    import importlib.machinery

    from avemo.runtime.recognizer import Recognizer
    from avemo.runtime.trt_backend import build_engine, current_device
    from tests.media_factory import write_media

    manifest = fake_gpu("10.3.0")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            importlib.machinery.ModuleSpec(name, None) if name in ("tensorrt", "pycuda") else real_find_spec(name, *a)
        ),
    )
    assert Recognizer(manifest.root, backend="auto").backend == "ort"  # no engines yet
    for modality in manifest.modalities:
        build_engine(manifest, modality, "fp32", current_device(), log=lambda *_: None)
    recognizer = Recognizer(manifest.root, backend="auto")
    assert recognizer.backend == "trt"
    result = recognizer.recognize(write_media(tmp_path / "clip.mp4", seconds=2.0))
    assert result.backend == "trt" and result.modality == "av"
    # The fake engine returns lengths / 1000 + k / 100 for the first lengths input (audio frames here).
    assert result.probs["sad"] - result.probs["happy"] == pytest.approx(0.01, abs=1e-6)


def test_timed_backend_splits_h2d_compute_d2h_with_cuda_events(fake_gpu):
    from avemo.runtime.trt_backend import TrtBackend, build_engine, current_device

    manifest = fake_gpu("10.3.0")
    build_engine(manifest, "a", "fp32", current_device(), log=lambda *_: None)
    with TrtBackend(manifest, "a", "fp32", timed=True) as backend:
        fake.CALLS.clear()
        backend.infer({"audio_feats": np.zeros((2, 60, 240), np.float32), "audio_lengths": np.array([60, 9])})
        names = [c[0] for c in fake.CALLS]
        records = [i for i, n in enumerate(names) if n == "event.record"]
        # Events bracket the copies in, the launch and the copy out, all before the synchronise.
        assert len(records) == 4
        assert records[0] < names.index("context.set_input_shape") < records[1]
        assert records[1] < names.index("context.execute_async_v3") < records[2] < records[3]
        assert records[3] < names.index("stream.synchronize")
        assert set(backend.last_phases_ms) == {"h2d", "compute", "d2h"}
        assert all(v > 0 for v in backend.last_phases_ms.values())
    with TrtBackend(manifest, "a", "fp32") as untimed:
        untimed.infer({"audio_feats": np.zeros((1, 60, 240), np.float32), "audio_lengths": np.array([60])})
        assert untimed.last_phases_ms == {}
