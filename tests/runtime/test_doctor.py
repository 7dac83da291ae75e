"""`avemo doctor` on a new device, driven by the TensorRT and pycuda TEST DOUBLES in tests/fakes/ (and without a GPU).

The doubles are not TensorRT; what each enforces is in its header (tests/fakes) and docs/TESTING.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from avemo.cli import main
from tests.conftest import DISCRETE, FAKES, FAULTS

ROOT = FAKES.parents[1]


def test_doctor_builds_missing_engines_checks_parity_times_and_reports(trt_double, tmp_path):
    """`avemo doctor MODELS` through the doubles: environment, ONNX parity, engines built, timed, memory."""
    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    out = tmp_path / "doctor"
    result = CliRunner().invoke(main, ["doctor", str(manifest.root), "--out", str(out), "--iters", "6"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "doctor.json").read_text())
    assert report["environment"]["gpu"]["name"] == "NVIDIA GeForce RTX 4090"
    assert report["environment"]["tensorrt"] == "10.3.0" and report["failures"] == 0
    checks = {c["check"]: c for c in report["checks"]}
    for modality in ("A", "V", "AV"):
        check = checks[f"TensorRT fp16 {modality}"]
        assert check["status"] == "ok" and check["engine"] == "built now"
        assert check["parity_max_abs_diff"] <= check["tolerance"] and check["device_memory_mib"] > 0
        assert check["trt_p50_ms"] > 0 and check["ort_p50_ms"] > 0
    assert "| TensorRT fp16 AV | ok |" in (out / "doctor.md").read_text()
    again = CliRunner().invoke(main, ["doctor", str(manifest.root), "--out", str(out), "--iters", "3"])
    assert again.exit_code == 0 and "engine found" in again.output
    # A stale engine is a named failure and exit code 1.
    sidecar = next((manifest.root / "engines").rglob("avemo_v_fp16.json"))
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    failed = CliRunner().invoke(main, ["doctor", str(manifest.root), "--out", str(out), "--iters", "3"])
    assert failed.exit_code == 1 and "[FAIL] TensorRT fp16 V: " in failed.output and "stale" in failed.output


def test_doctor_without_a_gpu_checks_onnx_and_says_what_it_could_not(colearn_export, tmp_path):
    out = tmp_path / "doctor"
    result = CliRunner().invoke(main, ["doctor", str(colearn_export[0]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "doctor.json").read_text())
    status = {c["check"]: c["status"] for c in report["checks"]}
    assert status["model files match manifest.json"] == "ok" and status["graph parity, fp32"] == "ok"
    assert status["TensorRT engines (build, parity, latency, memory)"] == "not checked"
    md = (out / "doctor.md").read_text()
    assert "tensorrt does not import here" in md and "pycuda does not import here" in md


@pytest.mark.parametrize("name", ["doctor.json", "doctor.md"])
def test_a_full_disk_is_one_line_and_leaves_no_empty_report(colearn_export, tmp_path, name):
    out = tmp_path / "doctor"
    env = {**os.environ, "PYTHONPATH": str(FAULTS), "AVEMO_FULL_DISK": f"*{name}*"}
    command = [str(Path(sys.executable).parent / "avemo"), "doctor", str(colearn_export[0]), "--out", str(out)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert run.stderr == f"Error: {out / name}: cannot write (No space left on device)\n"
    assert name not in os.listdir(out) and not [p for p in out.iterdir() if p.stat().st_size == 0 or ".tmp" in p.name]


def test_doctor_describes_the_gpu_when_only_tensorrt_is_missing(trt_double, monkeypatch, tmp_path):
    """pycuda and a GPU but no TensorRT (a fresh desktop or a Jetson without python3-libnvinfer)."""
    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # find_spec -> None, import fails
    out = tmp_path / "doctor"
    result = CliRunner().invoke(main, ["doctor", str(manifest.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "doctor.json").read_text())
    gpu = report["environment"]["gpu"]
    assert (gpu["name"], gpu["compute_capability"], gpu["memory_mib"]) == ("NVIDIA GeForce RTX 4090", "8.9", 24576)
    assert "tensorrt" not in report["environment"]
    engines = report["checks"][-1]
    assert engines["status"] == "not checked" and "tensorrt does not import" in engines["reason"]
