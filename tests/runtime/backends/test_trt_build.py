"""Building TensorRT engines (avemo build, avemo-export, checks before install), with the doubles in tests/fakes/.

The doubles are not TensorRT; what each enforces is in its header (tests/fakes) and docs/TESTING.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.errors import AvemoError
from avemo.runtime.backends.parity import sample_inputs
from avemo.runtime.models.manifest import load_manifest
from tests.conftest import FAKES, assert_close
from tests.conftest import build_with_double as _build

ROOT = FAKES.parents[1]


def test_stale_engine_is_refused_at_load(trt_double):
    """Item 5: an engine from before a re-export is refused with the rebuild command."""
    from avemo.runtime.backends.trt import TrtBackend

    manifest, _, _ = trt_double("10.3.0")
    (path,) = _build(manifest, "fp32", ["a"])
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["weights_sha256"] = "0" * 64  # as if the weights were exported again since
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(AvemoError, match=r"stale.*rebuild it: avemo build .* --precision fp32"):
        TrtBackend(manifest, "a", "fp32")


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_builds_are_strongly_typed_on_10_and_11(trt_double, version):
    """Item 6: no FP16/INT8 flags (an error on a strongly typed 10.x network, gone in 11.x); fp16 parity holds."""
    manifest, tensorrt, _ = trt_double(version)
    assert hasattr(tensorrt.BuilderFlag, "FP16") == (version.startswith("10"))
    (path,) = _build(manifest, "fp16", ["av"])
    plan = json.loads(path.read_bytes().split(b"\n", 1)[1])
    assert plan["strongly_typed"] and not {"FP16", "INT8"} & set(plan["flags"])
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["tolerance"] == 2e-2


def test_fp32_engines_clear_tf32(trt_double):
    """Item 6: TensorRT computes fp32 products in TF32 unless told not to; fp32 engines clear the flag.

    (How much TF32 moves the probabilities depends on the model: about 1e-3 on the demo's trained A+V
    graph in the double, beyond the 1e-4 fp32 tolerance; the untrained test model barely moves.)
    """
    manifest, _, _ = trt_double("10.3.0")
    (fp32,) = _build(manifest, "fp32", ["a"])
    (fp16,) = _build(manifest, "fp16", ["a"])
    plans = [json.loads(p.read_bytes().split(b"\n", 1)[1]) for p in (fp32, fp16)]
    assert [p["tf32"] for p in plans] == [False, True]
    # The fp16 engine computes as ONNX's fp16-faithful reference evaluator does (TF32 touches no fp16 product).
    from avemo.runtime.backends.reference import ReferenceBackend
    from avemo.runtime.backends.trt import TrtBackend

    inputs = sample_inputs(manifest.features, "a", 2, 2.0, 9)
    with TrtBackend(manifest, "a", "fp16") as engine:
        got = engine.infer(inputs)
    assert_close(got, ReferenceBackend(manifest.graph_path("a", "fp16")).infer(inputs), atol=1e-6)


def test_engine_that_misses_parity_is_not_installed(trt_double):
    """Item 7: every build runs parity.npz's samples; an engine beyond the tolerance never reaches engines/."""
    from avemo.contract import PARITY_FILE

    manifest, _, _ = trt_double("10.3.0")
    parity = manifest.root / PARITY_FILE
    with np.load(parity) as data:
        shifted = {k: data[k] + 1e-3 if k.startswith("a/") else data[k] for k in data.files}
    np.savez(parity, **shifted)  # references off by 1e-3 for the A graph: beyond fp32's 1e-4
    with pytest.raises(AvemoError, match=r"parity failed, max \|probs diff\| 1\.0\de-03 > 1e-04.*not installed"):
        _build(manifest, "fp32", ["a"])
    folder = manifest.root / "engines" / "nvidia-jetson-orin-nano-sm87-trt10.3.0"
    assert not list(folder.glob("avemo_a_fp32*"))
    (v,) = _build(manifest, "fp32", ["v"])
    assert json.loads(v.with_suffix(".json").read_text())["parity"]["max_abs_diff"] < 1e-4


def test_engine_that_does_not_match_the_manifest_is_refused(trt_double):
    """Item 7: at load, the engine's I/O names, dtypes, modes and shapes are compared with the manifest."""
    from avemo.runtime.backends.trt import TrtBackend

    manifest, _, _ = trt_double("10.3.0")
    a, v = _build(manifest, "fp32", ["a", "v"])
    shutil.copy(a, v)  # the V engine's file now holds the A engine
    with pytest.raises(AvemoError, match="does not match the model's manifest: tensors"):
        TrtBackend(manifest, "v", "fp32")


def test_timing_cache_from_another_gpu_is_not_used_nor_overwritten(trt_double, tmp_path):
    """Item 11: set_timing_cache's refusal is reported, not ignored."""
    from avemo.runtime.backends.build import build_engine
    from avemo.runtime.backends.trt import current_device

    manifest, _, _ = trt_double("10.3.0")
    cache = tmp_path / "trt.cache"
    cache.write_bytes(json.dumps({"timing-cache-double": "Other GPU sm75", "entries": 3}).encode())
    said: list[str] = []
    build_engine(manifest, "a", "fp32", current_device(), timing_cache=cache, log=said.append)
    assert any("timing cache from another GPU" in s for s in said)
    assert json.loads(cache.read_bytes())["timing-cache-double"] == "Other GPU sm75"
    fresh = tmp_path / "fresh.cache"
    build_engine(manifest, "a", "fp32", current_device(), timing_cache=fresh, log=said.append)
    assert json.loads(fresh.read_bytes())["entries"] == 1


def test_avemo_build_without_tensorrt_is_one_line(colearn_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    result = CliRunner().invoke(main, ["build", str(colearn_export[0])])
    assert result.exit_code == 1 and "avemo[trt]" in result.output and "Traceback" not in result.output


def test_export_goes_on_to_build_engines_where_tensorrt_and_pycuda_import(trt_double, micro_config, tmp_path):
    from tests.conftest import make_checkpoint

    trt_double("10.3.0")
    ckpt, _ = make_checkpoint(tmp_path / "a.pt", micro_config, "audio")
    result = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "engines" / "nvidia-jetson-orin-nano-sm87-trt10.3.0" / "avemo_a_fp32.engine").exists()


def test_type_check_catches_a_misspelt_tensorrt_call(tmp_path):
    """`make test` type-checks runtime/backends/trt.py against the TensorRT 10.13 stubs; prove that check can fail."""
    stubs = ROOT / ".venv" / "trt-stubs"
    if not (stubs / "tensorrt" / "__init__.pyi").exists():
        pytest.skip("TensorRT stubs not installed: run `make test` (scripts/typecheck_trt.sh installs them)")
    source = (ROOT / "runtime" / "backends" / "trt.py").read_text()
    assert "execute_async_v3(" in source
    bad = tmp_path / "trt_backend_bad.py"
    bad.write_text(source.replace("execute_async_v3(", "execute_async_v4("))
    cmd = [
        sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg"), "--check-untyped-defs",
        "--ignore-missing-imports", "--follow-imports=silent", "--disable-error-code=arg-type", str(bad),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={"MYPYPATH": str(stubs), "PATH": ""}, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert '"IExecutionContext" has no attribute "execute_async_v4"' in out.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None,
    reason="real TensorRT + pycuda are not installed (no GPU on this machine)",
)
def test_real_gpu_device_is_described():
    from avemo.runtime.backends.trt import current_device

    assert current_device().compute_capability[0] >= 5


def test_commands_run_end_to_end_with_the_doubles_on_the_path(colearn_export, tmp_path):
    """The contract: with PYTHONPATH=tests/fakes, build, infer --backend trt and doctor run as commands."""
    from avemo.runtime.media.sample import write_media

    models = tmp_path / "models"
    shutil.copytree(colearn_export[0], models)
    clip = write_media(tmp_path / "clip.mp4", seconds=2.0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), str(ROOT)]), "AVEMO_DOUBLE_TRT_VERSION": "11.1.0"}
    avemo = [sys.executable, "-c", "from avemo.cli import main; main()"]
    outputs = []
    for args in (
        ["build", str(models), "--precision", "fp16"],
        ["infer", str(clip), "--models", str(models), "--backend", "trt"],
        ["doctor", str(models), "--iters", "3"],
    ):
        done = subprocess.run([*avemo, *args], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        outputs.append(done)
    result = json.loads(outputs[1].stdout.splitlines()[0])
    assert result["backend"] == "trt" and result["modality"] == "av"
    assert "TensorRT fp16 engines for NVIDIA Jetson Orin Nano (sm87, TensorRT 11.1.0)" in outputs[1].stderr
    assert (models / "doctor.json").exists() and json.loads((models / "doctor.json").read_text())["failures"] == 0


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None, reason="nvidia-modelopt not installed")
def test_int8_in_one_command_exports_calibrates_and_builds(trt_double, micro_config, tiny_cache, tmp_path):
    """Item 12: `avemo-export RUN --precision int8 --data CACHE` = export + `avemo calibrate` + int8 engines."""
    from tests.conftest import make_checkpoint

    trt_double("10.3.0")  # ModelOpt sees tensorrt too and scans the graphs for plugin layers through it
    ckpt, _ = make_checkpoint(tmp_path / "audio.pt", micro_config, "audio")
    models = tmp_path / "m"
    missing = CliRunner().invoke(main, ["export", str(ckpt), "--precision", "int8", "--out", str(models)])
    assert missing.exit_code == 2 and "give --data CACHE" in missing.output
    args = [
        "export",
        str(ckpt),
        "--precision",
        "int8",
        "--data",
        str(tiny_cache),
        "--samples",
        "8",
        "--out",
        str(models),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert load_manifest(models).precisions[:3] == ["fp32", "fp16", "int8"]
    report = (models / "int8" / "accuracy.md").read_text()
    assert report.strip().splitlines()[0] in result.output  # the calibration report, as `avemo calibrate` prints it
    engine = models / "engines" / "nvidia-jetson-orin-nano-sm87-trt10.3.0" / "avemo_a_int8.engine"
    assert engine.exists() and json.loads(engine.with_suffix(".json").read_text())["source"] == "int8/fp16/avemo_a.onnx"
