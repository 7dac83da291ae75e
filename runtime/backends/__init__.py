"""Backends behind one interface (``base.Backend``): ONNX Runtime, TensorRT, ONNX's reference evaluator.

Beside them, what runs graphs to judge them: the fp16 lint and reference evaluator (``numerics``) and the
parity checks of a model folder's graphs (``parity``). Every backend avemo makes comes from here:
``open_backend`` for a graph of a model folder (what ``--backend auto|trt|ort`` resolves to,
``resolve_backend``), ``open_onnx`` for a loose ONNX file (calibration's candidates, parity checks). The
heavy packages (onnxruntime, onnx, tensorrt, pycuda) are imported only when a backend of that kind is opened.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avemo.contract import BACKENDS, ENGINE_PREFERENCE
from avemo.errors import AvemoError
from avemo.runtime.backends.base import (
    Backend,
    BackendBase,
    InputSpec,
    Staged,
    check_inputs,
    faces_for,
    write_padded,
)

if TYPE_CHECKING:
    from avemo.runtime.models.manifest import Manifest

__all__ = [
    "Backend",
    "BackendBase",
    "InputSpec",
    "Staged",
    "check_inputs",
    "faces_for",
    "open_backend",
    "open_onnx",
    "resolve_backend",
    "write_padded",
]

#: ``open_onnx`` kinds: ONNX Runtime; the reference evaluator; "checker": the reference evaluator where the
#: graph carries fp16 (ONNX Runtime on CPU computes fp16 ops in fp32 and hides their rounding), else ORT.
ONNX_KINDS = ("ort", "reference", "checker")


def open_onnx(
    path: Path,
    kind: str = "ort",
    threads: int | None = None,
    providers: list[str] | None = None,
    workload: str = "pipeline",
) -> Backend:
    """A backend over one ONNX file (``kind``: one of ONNX_KINDS; ``workload``: ONNX Runtime's, a key of
    ``ort.SPINNING``: what runs beside it)."""
    if kind not in ONNX_KINDS:
        raise AvemoError(f"unknown ONNX backend {kind!r}; expected one of {ONNX_KINDS}")
    if kind == "checker":
        from avemo.runtime.backends.numerics import has_fp16

        kind = "reference" if has_fp16(path) else "ort"
    if kind == "reference":
        from avemo.runtime.backends.reference import ReferenceBackend

        return ReferenceBackend(path)
    from avemo.runtime.backends.ort import OrtBackend

    return OrtBackend(path, threads, providers, workload)


def open_backend(
    manifest: Manifest,
    modality: str,
    precision: str,
    kind: str,
    threads: int | None = None,
    providers: list[str] | None = None,
    device_id: int = 0,
    scratch: Any = None,
    timed: bool = False,
    workload: str = "pipeline",
) -> Backend:
    """The backend of ``modality``'s ``precision`` graph in a model folder. ``kind``: 'ort' or 'trt' (as
    ``resolve_backend`` gives them); ``scratch``: TensorRT's shared activation area; ``timed``: TensorRT
    records CUDA events around each phase (for the profiler); ``workload``: ONNX Runtime's, a key of
    ``ort.SPINNING`` ("inference" where only graphs run, "pipeline" where decoding runs beside them)."""
    if kind == "trt":
        from avemo.runtime.backends.trt import TrtBackend

        return TrtBackend(manifest, modality, precision, device_id, timed=timed, scratch=scratch)
    if kind != "ort":
        raise AvemoError(f"unknown backend {kind!r}; expected ort or trt (resolve 'auto' with resolve_backend)")
    return open_onnx(manifest.graph_path(modality, precision), "ort", threads, providers, workload)


def resolve_backend(
    backend: str, manifest: Manifest, precision: str | None = None, device_id: int = 0
) -> tuple[str, str, str]:
    """(backend 'ort' or 'trt', precision, why). 'auto' is TensorRT where tensorrt and pycuda import and this
    GPU has engines (of ``precision``, or of the first of ENGINE_PREFERENCE built), else ONNX Runtime."""
    if backend not in BACKENDS:
        raise AvemoError(f"unknown backend {backend!r}; expected {', '.join(BACKENDS)}")
    if backend == "ort":
        return "ort", precision or "fp32", "ONNX Runtime (--backend ort)"
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        if backend == "trt":
            from avemo.runtime.backends.gpu import TRT_HINT

            raise AvemoError(f"--backend trt: tensorrt and pycuda do not import here; {TRT_HINT}")
        return "ort", precision or "fp32", "ONNX Runtime (tensorrt and pycuda do not import here)"
    from avemo.runtime.backends.engines import engine_path
    from avemo.runtime.backends.trt import current_device

    try:
        device = current_device(device_id)
    except AvemoError as exc:  # no driver or no such GPU: auto still runs, on the CPU
        if backend == "trt":
            raise
        return "ort", precision or "fp32", f"ONNX Runtime (no usable GPU: {exc})"
    wanted = (precision,) if precision else ENGINE_PREFERENCE
    for p in wanted:
        if all(engine_path(manifest.root, device, m, p).exists() for m in manifest.modalities):
            return "trt", p, f"TensorRT {p} engines for {device.describe()}"
    if backend == "trt":
        raise AvemoError(
            f"no {'/'.join(wanted)} engines for {device.describe()} in {manifest.root}; "
            f"build them here: avemo build {manifest.root} --precision {wanted[0]}"
        )
    return "ort", precision or "fp32", f"ONNX Runtime (no {'/'.join(wanted)} engines for {device.describe()})"
