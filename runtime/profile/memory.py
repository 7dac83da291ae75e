"""Peak resident memory of one backend, measured in a fresh process (and whether torch got loaded)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

from avemo.process import child_pool
from avemo.runtime.models.manifest import load_manifest
from avemo.runtime.profile.cases import Baseline, load_runner, profile_inputs


def peak_rss(
    models: Path, backend: str, precision: str, graph: str, batch: int, seconds: float, threads: int | None,
    checkpoint: Path | None, baseline: Baseline | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Peak resident memory of a fresh process that loads one backend and runs it (and whether torch got loaded)."""
    args = (models, backend, precision, graph, batch, seconds, threads, checkpoint, baseline)
    with child_pool(1) as pool:  # a fresh process, ended with this one
        return pool.submit(_rss_child, *args).result()


def _rss_child(
    models: Path, backend: str, precision: str, graph: str, batch: int, seconds: float, threads: int | None,
    checkpoint: Path | None, baseline: Baseline | None,
) -> dict[str, Any]:  # fmt: skip
    manifest = load_manifest(models, verify=False)
    inputs = profile_inputs(manifest, graph, batch, seconds)
    with load_runner(manifest, backend, precision, graph, threads, checkpoint, baseline) as runner:
        for _ in range(5):
            runner.infer(inputs)
    return {
        "backend": backend,
        "precision": precision,
        "peak_rss_mb": _peak_rss_mb(),
        "torch_loaded": "torch" in sys.modules,
    }


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM (ru_maxrss keeps the forking parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
