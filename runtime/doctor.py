"""`avemo doctor MODELS`: the first check on a new device.

Reports the environment (GPU, compute capability, memory, driver, CUDA,
TensorRT, pycuda, JetPack and power mode where present), verifies the model
directory and its ONNX parity on ONNX Runtime, then, where TensorRT and pycuda
import and a GPU answers: builds the engines that are missing, runs parity
through every engine, times each engine against ONNX Runtime on the same
inputs (interleaved) and reports device memory. Writes ``doctor.json`` and
``doctor.md``. Every failure is named; what could not be checked is said.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avemo import __version__
from avemo.contract import PARITY_FILE, PRECISION_DIRS
from avemo.errors import AvemoError
from avemo.io import atomic_write_bytes, cannot_write
from avemo.machine import describe, package_version

TIMING_SHAPE = (1, 5.0)  # batch, seconds: one 5-s clip, the engines' optimum


class Doctor:
    """Collects checks: ``ok(name, **facts)``, ``fail(name, reason)``, ``skip(name, reason)``."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.checks: list[dict[str, Any]] = []
        self.log = log

    def _add(self, status: str, name: str, **facts: Any) -> None:
        self.checks.append({"check": name, "status": status, **facts})
        detail = facts.get("reason") or ", ".join(f"{k} {v}" for k, v in facts.items() if not isinstance(v, dict))
        self.log(f"[{status}] {name}" + (f": {detail}" if detail else ""))

    def ok(self, name: str, **facts: Any) -> None:
        self._add("ok", name, **facts)

    def fail(self, name: str, reason: str) -> None:
        self._add("FAIL", name, reason=reason)

    def warn(self, name: str, reason: str) -> None:
        """Worth knowing, not a failure: the exit code stays 0."""
        self._add("WARN", name, reason=reason)

    def skip(self, name: str, reason: str) -> None:
        self._add("not checked", name, reason=reason)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["status"] == "FAIL"]


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device_id: int) -> tuple[dict[str, Any], str | None]:
    """What this machine is; and why TensorRT cannot be checked here (None when it can)."""
    env: dict[str, Any] = {
        "machine": describe(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": sys.version.split()[0],
        "avemo": __version__,
        "onnxruntime": package_version("onnxruntime") or package_version("onnxruntime-gpu"),
    }
    tegra = Path("/etc/nv_tegra_release")
    if tegra.exists():
        env["l4t"] = tegra.read_text().splitlines()[0].strip()
        env["jetpack"] = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) or "unknown"
        env["power_mode"] = _run(["nvpmodel", "-q"])
    # The GPU is described whenever pycuda imports: "GPU fine, TensorRT missing" is the common first finding.
    gpu_problem = _describe_gpu(env, device_id)
    if importlib.util.find_spec("tensorrt") is None:
        missing = "tensorrt does not import here (pip install 'avemo[trt]'; on Jetson: JetPack's python3-libnvinfer)"
        return env, "; ".join(filter(None, (missing, gpu_problem)))
    import tensorrt

    env["tensorrt"] = tensorrt.__version__
    return env, gpu_problem


def _describe_gpu(env: dict[str, Any], device_id: int) -> str | None:
    """Add pycuda's view of the GPU to ``env``; returns why the GPU cannot be used (None when it can)."""
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda does not import here (pip install pycuda: it compiles against the CUDA toolkit's headers)"
    import pycuda

    from avemo.runtime.backends.gpu import driver, gpu_info

    env["pycuda"] = getattr(pycuda, "VERSION_TEXT", None) or package_version("pycuda")
    try:
        cuda = driver()
        info = gpu_info(device_id)
    except Exception as exc:  # no driver, no device: say it, keep the ONNX checks
        return f"no usable GPU: {str(exc).splitlines()[0]}"
    version = cuda.get_driver_version()
    env["gpu"] = {
        "index": info.index,
        "name": info.name,
        "compute_capability": ".".join(map(str, info.compute_capability)),
        "memory_mib": info.total_memory >> 20,
        "integrated": info.integrated,
        "cuda_driver_api": f"{version // 1000}.{version % 1000 // 10}",
    }
    env["nvidia_smi"] = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return None


def run_doctor(
    models: Path,
    out: Path | None = None,
    precisions: tuple[str, ...] = ("fp16",),
    device_id: int = 0,
    iters: int = 30,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every check; writes OUT/doctor.json and doctor.md (OUT: ``models``); returns the report."""
    from avemo.runtime.backends.parity import check_parity, load_references, parity_samples
    from avemo.runtime.models.manifest import load_manifest

    doctor = Doctor(log)
    env, no_trt = environment(device_id)
    log(f"environment: {json.dumps(env)}")
    try:
        manifest = load_manifest(models, verify=True)
        doctor.ok("model files match manifest.json", files=len(manifest.files))
    except AvemoError as exc:
        doctor.fail("model files match manifest.json", str(exc))
        return _finish(doctor, env, models, out)
    samples = parity_samples(manifest.features, manifest.modalities, manifest.faces_dtype)
    references = load_references(manifest.root / PARITY_FILE)
    for precision, folder in manifest.graph_sets():
        name = f"graph parity, {precision}" + ("" if folder == PRECISION_DIRS[precision] else f" ({folder}/)")
        try:
            report = check_parity(manifest.root / folder, samples, references, precision)
            worst = max(r["max_abs_diff"] for r in report.values())
            moved = max(r["padding_invariance"] for r in report.values())
            runners = sorted({r["runner"] for r in report.values()})
            doctor.ok(
                name,
                max_abs_diff=float(f"{worst:.3g}"),
                padding_invariance=float(f"{moved:.3g}"),
                runner=", ".join(runners),
            )
        except AvemoError as exc:
            doctor.fail(name, str(exc))
        warning = manifest.accuracy_warning(precision)
        if warning and folder == PRECISION_DIRS[precision]:  # once per precision, not per graph set
            doctor.warn(f"accuracy target, {precision}", warning)
    if no_trt:
        doctor.skip("TensorRT engines (build, parity, latency, memory)", no_trt)
    else:
        for precision in precisions:
            _check_engines(doctor, manifest, precision, device_id, iters)
    return _finish(doctor, env, models, out)


def _check_engines(doctor: Doctor, manifest: Any, precision: str, device_id: int, iters: int) -> None:
    from avemo.runtime.backends import open_backend
    from avemo.runtime.backends.build import build_engine, check_built_engine
    from avemo.runtime.backends.engines import check_engine, engine_path
    from avemo.runtime.backends.parity import sample_inputs
    from avemo.runtime.backends.trt import current_device
    from avemo.runtime.timing import interleaved_latency

    if precision not in manifest.precisions:
        doctor.skip(f"TensorRT {precision}", f"no {precision} graphs in {manifest.root} (export or calibrate first)")
        return
    device = current_device(device_id)
    for modality in manifest.modalities:
        name = f"TensorRT {precision} {modality.upper()}"
        path = engine_path(manifest.root, device, modality, precision)
        try:
            built = "found" if path.exists() else "built now"
            if not path.exists():  # the build itself runs parity and records it in the sidecar
                build_engine(manifest, modality, precision, device, device_id=device_id, log=lambda *_: None)
            meta = check_engine(path, device, manifest)
            if built == "built now":
                parity, memory = meta["parity"], meta["device_memory"]
            else:  # an engine from before: run parity through it here
                parity, memory = check_built_engine(
                    manifest, modality, precision, path, device_id, meta.get("max_batch")
                )
            inputs = sample_inputs(manifest.features, modality, *TIMING_SHAPE, seed=7)
            with (
                open_backend(manifest, modality, precision, "ort", workload="inference") as ort,
                open_backend(manifest, modality, precision, "trt", device_id=device_id) as engine,
            ):
                calls = {
                    "trt": lambda e=engine, x=inputs: e.infer(x),
                    "ort": lambda o=ort, x=inputs: o.infer(x),
                }
                samples = interleaved_latency(calls, max(1, iters // 3), warmup=3, rounds=3)
            p50 = {k: float(np.median(v)) for k, v in samples.items()}
            doctor.ok(
                name,
                engine=built,
                max_batch=meta.get("max_batch"),
                parity_max_abs_diff=float(f"{parity['max_abs_diff']:.3g}"),
                tolerance=parity["tolerance"],
                trt_p50_ms=round(p50["trt"], 3),
                ort_p50_ms=round(p50["ort"], 3),
                speedup_vs_ort=round(p50["ort"] / p50["trt"], 2),
                device_memory_mib=round(memory / 2**20, 1),
            )
        except AvemoError as exc:
            doctor.fail(name, str(exc))


def _finish(doctor: Doctor, env: dict[str, Any], models: Path, out: Path | None) -> dict[str, Any]:
    out = Path(out or models)
    out.mkdir(parents=True, exist_ok=True)
    report = {"environment": env, "checks": doctor.checks, "failures": len(doctor.failures)}
    for name, data in (("doctor.json", json.dumps(report, indent=2) + "\n"), ("doctor.md", markdown(report, models))):
        try:
            atomic_write_bytes(out / name, data.encode())  # a full disk leaves the old file or none, never half
        except OSError as exc:
            raise cannot_write(out / name, exc) from None
    return report


def markdown(report: dict[str, Any], models: Path) -> str:
    env = report["environment"]
    lines = [f"# avemo doctor: {models}", "", "| environment | |", "|---|---|"]
    for key, value in env.items():
        lines.append(f"| {key} | {json.dumps(value) if isinstance(value, dict) else value} |")
    lines += ["", "| check | status | details |", "|---|---|---|"]
    for check in report["checks"]:
        facts = {k: v for k, v in check.items() if k not in ("check", "status")}
        lines.append(f"| {check['check']} | {check['status']} | {', '.join(f'{k}: {v}' for k, v in facts.items())} |")
    verdict = f"{report['failures']} failure(s)" if report["failures"] else "no failures"
    return "\n".join(lines) + f"\n\n{verdict}\n"
