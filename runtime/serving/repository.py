"""A Triton Inference Server model repository from an exported model directory.

One Triton model per graph (avemo_a, avemo_v, avemo_av): config.pbtxt with the
manifest's tensor names, dtypes and dims, dynamic batching and an instance
group, and in version folder 1/ either
- ``onnxruntime``: the ONNX graph (model.onnx, its shared weight file beside it),
- ``tensorrt``: a TensorRT engine (model.plan), or
- ``python``: a two-line model.py that runs the graph through avemo's own runtime
  (`avemo.runtime.serving.triton_model`) from the models folder beside it; this
  backend adds ``avemo_media`` (encoded clip in, emotions out). Its config names
  the Python environment with avemo installed (``EXECUTION_ENV_PATH``).
Files are copied (reflinked where the file system can; never hard-linked), only
those the manifest lists, and the models are swapped in atomically
(`avemo.runtime.serving.files`). Torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from avemo.contract import MODALITIES, PROFILE_BATCH, PROFILE_BUCKETS, WEIGHTS_FILE
from avemo.errors import AvemoError
from avemo.io import atomic_write_bytes
from avemo.runtime.backends.engines import ENGINES_DIR
from avemo.runtime.models.manifest import Manifest, load_manifest
from avemo.runtime.serving.files import inside, place, staging_for, swap_in

TRITON_BACKENDS = {
    "onnxruntime": ("onnxruntime", "model.onnx"),
    "tensorrt": ("tensorrt", "model.plan"),
    "python": ("python", "model.py"),
}
DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8",
}
MEDIA_MODEL = "avemo_media"
#: model.py of a Python-backend model: all code lives in avemo (installed in EXECUTION_ENV_PATH).
MODEL_PY = """\
# Written by `avemo export-triton --backend python`: the model's code is avemo's (installed in the
# environment that config.pbtxt's EXECUTION_ENV_PATH names); its files are in models/ beside this file.
from avemo.runtime.serving.triton_model import {cls} as TritonPythonModel  # noqa: F401
"""
#: Requests wait at most this long for others to batch with (Triton's dynamic batcher).
QUEUE_DELAY_US = 2000


def model_name(modality: str) -> str:
    return f"avemo_{modality}"


def _tensor(name: str, dtype: str, dims: list[int], reshape: bool = False, ragged: bool = False) -> str:
    return (
        f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]'
        + (" reshape: { shape: [ ] }" if reshape else "")
        + (" allow_ragged_batch: true" if ragged else "")
        + " }"
    )


def _parameters(parameters: dict[str, str]) -> list[str]:
    return [f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items()]


def config_pbtxt(
    manifest: Manifest,
    modality: str,
    backend: str,
    max_batch: int,
    instances: int,
    kind: str,
    parameters: dict[str, str] | None = None,
    profiles: int = 0,
) -> str:
    """The text-format ModelConfig of one graph (checked against Triton's proto by the tests). ``profiles``: a
    TensorRT engine's optimisation profiles, all offered to its instances (Triton would use only the first)."""
    name, _ = TRITON_BACKENDS[backend]
    lines = [f'name: "{model_name(modality)}"', f'backend: "{name}"', f"max_batch_size: {max_batch}"]

    def tensor(spec: dict[str, Any], ragged: bool = False) -> str:
        dims = [-1 if isinstance(d, str) else int(d) for d in spec["shape"][1:]]  # the batch axis is implicit
        # a per-clip scalar (a length) travels as [1] and reaches the model as a scalar per clip
        return _tensor(spec["name"], DTYPES[spec["dtype"]], dims or [1], reshape=not dims, ragged=ragged)

    # Triton batches only requests of one shape, unless an input allows ragged batches: the Python
    # models pad the requests they get together themselves (GraphModel), so clips of any length batch.
    ragged = backend == "python"
    inputs = [tensor(s, ragged and any(isinstance(d, str) for d in s["shape"][1:])) for s in manifest.inputs(modality)]
    lines.append("input [\n" + ",\n".join(inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(tensor(s) for s in manifest.outputs(modality)) + "\n]")
    preferred = sorted({b for b in PROFILE_BATCH[1:] if 1 < b <= max_batch} | {max_batch})
    lines.append(
        f"dynamic_batching {{ preferred_batch_size: [ {', '.join(map(str, preferred))} ] "
        f"max_queue_delay_microseconds: {QUEUE_DELAY_US} }}"
    )
    names = ", ".join(f'"{k}"' for k in range(profiles))
    offered = f" profile: [ {names} ]" if profiles else ""
    lines.append(f"instance_group [ {{ count: {instances} kind: {kind}{offered} }} ]")
    return "\n".join(lines + _parameters(parameters or {})) + "\n"


def media_config_pbtxt(instances: int, parameters: dict[str, str]) -> str:
    """avemo_media: one encoded clip per request (no batching: each clip is decoded on its own); clips
    run in parallel on ``instances`` processes."""
    from avemo.contract import NUM_LABELS
    from avemo.runtime.serving.triton_model import MEDIA_INPUT, MEDIA_OUTPUTS

    outputs = [_tensor(name, "TYPE_UINT8", [-1]) for name in MEDIA_OUTPUTS[1:]]  # UTF-8 text
    lines = [
        f'name: "{MEDIA_MODEL}"',
        'backend: "python"',
        "max_batch_size: 0",
        "input [\n" + _tensor(MEDIA_INPUT, "TYPE_UINT8", [-1]) + "\n]",  # the clip's bytes
        "output [\n" + ",\n".join([_tensor(MEDIA_OUTPUTS[0], "TYPE_FP32", [NUM_LABELS]), *outputs]) + "\n]",
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]",
    ]
    return "\n".join(lines + _parameters(parameters)) + "\n"


def default_python_env() -> str | None:
    """The running virtualenv (where avemo is installed), or None outside one."""
    return sys.prefix if sys.prefix != sys.base_prefix else None


def export_triton(
    models: Path,
    out: Path,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    max_batch: int | None = None,
    instances: int = 1,
    engines: Path | None = None,
    force: bool = False,
    python_env: str | None = None,
    python_runtime: str = "auto",
    media_instances: int | None = None,
    media_max_seconds: float | None = None,
) -> dict[str, Path]:
    """Write the repository; returns {model name without "avemo_": model folder} (``media`` for avemo_media).

    ``python_env``: the Python backend's EXECUTION_ENV_PATH ("" for none: avemo is in the stub's own
    Python); default: the running virtualenv. ``python_runtime``: what the Python models run the
    graphs on: ort, trt or auto (TensorRT where engines for the serving GPU exist).
    ``media_instances``: avemo_media's processes (default: this machine's cores), each with
    cores / instances threads, so that concurrent clips decode and run in parallel.
    ``media_max_seconds``: longer media is refused (default 600).
    """
    if backend not in TRITON_BACKENDS:
        raise AvemoError(f"unknown Triton backend {backend!r}; choose {', '.join(TRITON_BACKENDS)}")
    manifest = load_manifest(models)
    largest = manifest.max_batch
    sources: dict[str, Path] = {}
    if backend == "python":
        manifest.graph_path(manifest.modalities[0], precision)  # refuses a precision the model lacks, now
    else:
        sources = {m: _source(manifest, m, backend, precision, engines) for m in manifest.modalities}
    if backend == "tensorrt":  # engines may be built for fewer clips per call (`avemo build --max-batch`)
        largest = min(_engine_max_batch(plan, largest) for plan in sources.values())
        if max_batch and max_batch > largest:
            raise AvemoError(f"--max-batch {max_batch} exceeds the engines' profile (up to {largest} clips)")
    max_batch = max_batch or largest
    out = Path(out)
    names = [model_name(m) for m in MODALITIES] + [MEDIA_MODEL]
    existing = [out / name for name in names if (out / name).exists()]
    if existing and not force:
        raise AvemoError(f"{out}: already holds {', '.join(p.name for p in existing)}; use --force to replace")
    env = default_python_env() if python_env is None else python_env
    parameters = {"AVEMO_PRECISION": precision, "AVEMO_BACKEND": python_runtime}
    if env:
        if not (Path(env) / "bin").is_dir():
            raise AvemoError(f"--python-env {env}: not a Python environment (no bin/ folder)")
        parameters["EXECUTION_ENV_PATH"] = str(Path(env).resolve())
    media = _media_parameters(parameters, media_instances, media_max_seconds)
    staging = staging_for(out)
    try:
        written = _write(manifest, staging, backend, precision, max_batch, instances, parameters, sources, media)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, out, names)
    return {key: out / folder.name for key, folder in written.items()}


def _write(
    manifest: Manifest,
    out: Path,
    backend: str,
    precision: str,
    max_batch: int,
    instances: int,
    parameters: dict[str, str],
    sources: dict[str, Path],
    media: tuple[int, dict[str, str]],
) -> dict[str, Path]:
    """The models of the repository, into ``out`` (a staging folder)."""
    kind = "KIND_GPU" if backend == "tensorrt" else "KIND_CPU"
    folders = {}
    for modality in manifest.modalities:
        version = out / model_name(modality) / "1"
        version.mkdir(parents=True)
        if backend == "python":
            _python_model(manifest, version, "GraphModel")
            text = config_pbtxt(manifest, modality, backend, max_batch, instances, kind, parameters)
        else:
            place(sources[modality], version / TRITON_BACKENDS[backend][1])
            if backend == "onnxruntime":  # the graph names its external data file relative to itself
                place(sources[modality].parent / WEIGHTS_FILE, version / WEIGHTS_FILE)
            profiles = _engine_profiles(sources[modality]) if backend == "tensorrt" else 0
            text = config_pbtxt(manifest, modality, backend, max_batch, instances, kind, profiles=profiles)
        atomic_write_bytes(version.parent / "config.pbtxt", text.encode())
        folders[modality] = version.parent
    if backend == "python":
        version = out / MEDIA_MODEL / "1"
        version.mkdir(parents=True)
        _python_model(manifest, version, "MediaModel")
        atomic_write_bytes(version.parent / "config.pbtxt", media_config_pbtxt(*media).encode())
        folders["media"] = version.parent
    return folders


def _media_parameters(
    parameters: dict[str, str], instances: int | None, max_seconds: float | None
) -> tuple[int, dict[str, str]]:
    """avemo_media's instance count and parameters: one process per core by default (decoding and face
    search are most of a clip's time and run per process), the cores shared out as threads."""
    from avemo.runtime.serving.triton_model import DEFAULT_MAX_SECONDS, MAX_SECONDS

    if max_seconds is not None and not 0 < max_seconds < float("inf"):
        raise AvemoError(f"--media-max-seconds {max_seconds}: give a positive number of seconds")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    instances = instances or cores
    return instances, {
        **parameters,
        "AVEMO_THREADS": str(max(1, cores // instances)),
        MAX_SECONDS: f"{max_seconds or DEFAULT_MAX_SECONDS:g}",
    }


def _python_model(manifest: Manifest, version: Path, cls: str) -> None:
    """model.py and the models folder (copies of the model's own files) of one Python-backend model."""
    from avemo.runtime.serving.triton_model import MODELS_DIR

    atomic_write_bytes(version / "model.py", MODEL_PY.format(cls=cls).encode())
    for relative in model_files(manifest):
        place(manifest.root / relative, version / MODELS_DIR / relative)


def model_files(manifest: Manifest) -> list[str]:
    """What a models folder needs: manifest.json, the files it lists, the engines built for it; each
    inside the folder (AvemoError otherwise). Nothing else: no notes, no symlinks, no stray files."""
    root = manifest.root
    files = ["manifest.json", *sorted(manifest.files)]
    built = sorted(p for p in (root / ENGINES_DIR).glob("*/avemo_*") if p.suffix in (".engine", ".json"))
    files += [str(p.relative_to(root)) for p in built]
    for relative in files:
        inside(root, relative, "files entry")
    return files


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


def _engine_meta(plan: Path) -> dict[str, Any]:
    sidecar = plan.with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


def _engine_max_batch(plan: Path, default: int) -> int:
    return int(_engine_meta(plan).get("max_batch", default))


def _engine_profiles(plan: Path) -> int:
    """An engine's optimisation profiles: one per length bucket (one if built before buckets)."""
    meta = _engine_meta(plan)  # none: an engine avemo did not build; built now, it would have the buckets
    buckets = meta.get("buckets") if meta else PROFILE_BUCKETS
    return len(buckets) if buckets else 1
