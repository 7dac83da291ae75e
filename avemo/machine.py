"""A one-line description of the machine, stamped on every result and benchmark."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    python = sys.version.split()[0]
    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {python}"


def package_version(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpus() -> list[dict[str, str]]:
    """Name, driver and memory of each NVIDIA GPU, from nvidia-smi (empty where there is none)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        lines = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    return [
        dict(zip(("name", "driver", "memory"), (p.strip() for p in line.split(",")), strict=False)) for line in lines
    ]


def machine_info() -> dict[str, object]:
    """Everything a benchmark number depends on: CPU, cores, GPU + driver, library versions (torch not imported)."""
    versions = {d: package_version(d) for d in ("onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "numpy", "onnx")}
    return {
        "summary": describe(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": sys.version.split()[0],
        "gpus": gpus(),
        "versions": {k: v for k, v in versions.items() if v},
    }
