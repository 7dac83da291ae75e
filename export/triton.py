"""A Triton Inference Server model repository from an exported model directory.

One Triton model per graph (avemo_a, avemo_v, avemo_av): config.pbtxt with the
manifest's tensor names, dtypes and dims, dynamic batching and an instance
group; the ONNX graph (as 1/model.onnx, its shared weight file beside it) or
a TensorRT engine (as 1/model.plan). Torch-free.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from avemo.contract import MODALITIES, PROFILE_BATCH, WEIGHTS_FILE
from avemo.errors import AvemoError
from avemo.io import atomic_write_bytes
from avemo.runtime.engines import ENGINES_DIR
from avemo.runtime.manifest import Manifest, load_manifest

TRITON_BACKENDS = {"onnxruntime": ("onnxruntime", "model.onnx"), "tensorrt": ("tensorrt", "model.plan")}
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
#: Requests wait at most this long for others to batch with (Triton's dynamic batcher).
QUEUE_DELAY_US = 2000


def model_name(modality: str) -> str:
    return f"avemo_{modality}"


def config_pbtxt(manifest: Manifest, modality: str, backend: str, max_batch: int, instances: int, kind: str) -> str:
    """The text-format ModelConfig of one graph (checked against Triton's proto by the tests)."""
    name, _ = TRITON_BACKENDS[backend]
    graph = manifest.data["graphs"][modality]
    lines = [f'name: "{model_name(modality)}"', f'backend: "{name}"', f"max_batch_size: {max_batch}"]

    def tensor(spec: dict[str, Any]) -> str:
        dims = [-1 if isinstance(d, str) else int(d) for d in spec["shape"][1:]]  # the batch axis is implicit
        reshape = ""
        if not dims:  # a per-clip scalar
            dims, reshape = [1], " reshape: { shape: [ ] }"
        return (
            f'  {{ name: "{spec["name"]}" data_type: {DTYPES[spec["dtype"]]} '
            f"dims: [ {', '.join(map(str, dims))} ]{reshape} }}"
        )

    lines.append("input [\n" + ",\n".join(tensor(s) for s in graph["inputs"]) + "\n]")
    lines.append("output [\n" + ",\n".join(tensor(s) for s in graph["outputs"]) + "\n]")
    preferred = sorted({b for b in PROFILE_BATCH[1:] if 1 < b <= max_batch} | {max_batch})
    lines.append(
        f"dynamic_batching {{ preferred_batch_size: [ {', '.join(map(str, preferred))} ] "
        f"max_queue_delay_microseconds: {QUEUE_DELAY_US} }}"
    )
    lines.append(f"instance_group [ {{ count: {instances} kind: {kind} }} ]")
    return "\n".join(lines) + "\n"


def export_triton(
    models: Path,
    out: Path,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    max_batch: int | None = None,
    instances: int = 1,
    engines: Path | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Write the repository; returns {modality: model folder}."""
    if backend not in TRITON_BACKENDS:
        raise AvemoError(f"unknown Triton backend {backend!r}; choose {', '.join(TRITON_BACKENDS)}")
    manifest = load_manifest(models)
    max_batch = max_batch or manifest.data["profiles"]["batch"][2]
    if backend == "tensorrt" and max_batch > manifest.data["profiles"]["batch"][2]:
        raise AvemoError(f"--max-batch {max_batch} exceeds the engines' profile ({manifest.data['profiles']['batch']})")
    sources = {m: _source(manifest, m, backend, precision, engines) for m in manifest.modalities}
    out = Path(out)
    existing = [out / model_name(m) for m in MODALITIES if (out / model_name(m)).exists()]
    if existing and not force:
        raise AvemoError(f"{out}: already holds {', '.join(p.name for p in existing)}; use --force to replace")
    kind = "KIND_GPU" if backend == "tensorrt" else "KIND_CPU"
    folders = {}
    for modality, source in sources.items():
        folder = out / model_name(modality)
        shutil.rmtree(folder, ignore_errors=True)
        version = folder / "1"
        version.mkdir(parents=True)
        _place(source, version / TRITON_BACKENDS[backend][1])
        if backend == "onnxruntime":  # the graph names its external data file relative to itself
            _place(source.parent / WEIGHTS_FILE, version / WEIGHTS_FILE)
        text = config_pbtxt(manifest, modality, backend, max_batch, instances, kind)
        atomic_write_bytes(folder / "config.pbtxt", text.encode())
        folders[modality] = folder
    return folders


def _source(manifest: Manifest, modality: str, backend: str, precision: str, engines: Path | None) -> Path:
    if backend == "onnxruntime":
        return manifest.graph_path(modality, precision)
    if precision == "int8-cpu":
        raise AvemoError("int8-cpu is ONNX Runtime's CPU graph; TensorRT serves --precision int8")
    root = Path(engines) if engines else None
    if root is None:
        built = sorted(p for p in (manifest.root / ENGINES_DIR).glob("*") if p.is_dir())
        if len(built) != 1:
            found = ", ".join(p.name for p in built) or "none"
            raise AvemoError(
                f"{manifest.root / ENGINES_DIR}: pass --engines for the GPU Triton will run on (found: {found}); "
                f"engines are built on that GPU with `avemo build`"
            )
        root = built[0]
    plan = root / f"avemo_{modality}_{precision}.engine"
    if not plan.is_file():
        raise AvemoError(f"{plan}: no {precision} engine; build it on the serving GPU with `avemo build`")
    return plan


def _place(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (no second copy of the weights), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
