"""TensorRT: building engines on the device and checking each before it is installed (torch-free).

Written against the TensorRT 10/11 Python API (``build_serialized_network``, strongly typed networks on
11.x); the network flags per precision are ``avemo.runtime.backends.engines.build_flags``. A built engine
runs the parity samples (``check_built_engine``) before it replaces anything. Each engine gets one
optimisation profile per length bucket (``PROFILE_BUCKETS``), recorded in its sidecar. Neither tensorrt nor pycuda
installs on our build machines: the tests drive this code with test doubles (``tests/fakes``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import PARITY_FILE, PARITY_TOLERANCE, PROFILE_BUCKETS
from avemo.errors import AvemoError
from avemo.io import atomic_write_bytes
from avemo.runtime.backends.engines import (
    Buckets,
    Device,
    Profile,
    batch_limit,
    bucket_profiles,
    build_flags,
    default_max_batch,
    engine_path,
    write_sidecar,
)
from avemo.runtime.backends.gpu import active, gpu_info, needs_trt
from avemo.runtime.backends.trt import TrtBackend, current_device, logger
from avemo.runtime.models.manifest import Manifest


def build_engine(
    manifest: Manifest,
    modality: str,
    precision: str,
    device: Device,
    workspace_mb: int = 1024,
    timing_cache: Path | None = None,
    device_id: int = 0,
    log: Callable[[str], None] = print,
    max_batch: int | None = None,
    buckets: Buckets | None = PROFILE_BUCKETS,
) -> Path:
    """Build one engine on device ``device_id``, check it against parity.npz, then install it; returns its path.

    The engine is written beside its final name first and run on the parity
    samples; only an engine within the precision's tolerance is installed (its
    sidecar records the largest difference and its device memory). ``max_batch``:
    clips per call (default: ``default_max_batch`` for the GPU); ``buckets``: one profile each (None: one
    profile over the whole range, as engines were built before buckets).
    """
    with needs_trt():
        import tensorrt as trt
    if max_batch is None:
        info = gpu_info(device_id)
        max_batch = default_max_batch(info.total_memory, info.integrated)
    max_batch = batch_limit(manifest, max_batch)
    onnx_path = manifest.graph_path(modality, precision, tensorrt=True)
    path = engine_path(manifest.root, device, modality, precision)
    candidate = path.with_name(path.name + ".partial")
    with active(device_id):
        plan, cache = _serialized_engine(
            onnx_path, build_flags(trt.__version__, precision), bucket_profiles(manifest, modality, max_batch, buckets),
            workspace_mb, timing_cache, log,
        )  # fmt: skip
        atomic_write_bytes(candidate, plan)
        if cache is not None and timing_cache is not None:
            atomic_write_bytes(timing_cache, cache)
    del plan  # the host copy too: a Jetson's GPU shares that memory with the parity run below
    try:
        parity, memory = check_built_engine(manifest, modality, precision, candidate, device_id, max_batch, buckets)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    candidate.replace(path)
    write_sidecar(path, device, manifest, modality, precision, max_batch, buckets, parity=parity, device_memory=memory)
    log(
        f"built {path}: up to {max_batch} clips per call, parity max |diff| {parity['max_abs_diff']:.1e} "
        f"(tolerance {parity['tolerance']:.0e}), device memory {memory / 2**20:.1f} MiB"
    )
    return path


def build_engines(
    manifest: Manifest,
    precision: str,
    workspace_mb: int = 1024,
    timing_cache: Path | None = None,
    device_id: int = 0,
    max_batch: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Build (and check) every graph's engine on device ``device_id``; returns each one's device memory."""
    device = current_device(device_id)
    log(f"building {precision} engines for {device.describe()} (device {device_id})")
    memory = {}
    for modality in manifest.modalities:
        path = build_engine(
            manifest, modality, precision, device, workspace_mb, timing_cache, device_id, log, max_batch
        )
        memory[modality] = json.loads(path.with_suffix(".json").read_text())["device_memory"]
    # A Recognizer shares one activation area among its engines: the largest, not the sum.
    log(
        "device memory (activations): "
        + ", ".join(f"{m.upper()} {b / 2**20:.1f} MiB" for m, b in memory.items())
        + f"; a Recognizer holds {max(memory.values()) / 2**20:.1f} MiB (shared) plus its input buffers"
    )
    return memory


def _serialized_engine(
    onnx_path: Path,
    flags: tuple[list[str], list[str], list[str]],
    limits: list[Profile],
    workspace_mb: int,
    timing_cache: Path | None,
    log: Callable[[str], None],
) -> tuple[bytes, bytes | None]:
    """Parse and build (inside ``active``): the plan and the timing cache, as bytes. The builder, network,
    parser, config and serialized plan are released before this returns, also on an error, so that they go
    inside the CUDA context and before anything else allocates."""
    import tensorrt as trt  # a plain import: mypy checks every call against TensorRT's stubs

    network_flags, set_flags, clear_flags = flags
    builder = network = parser = config = profile = cache = serialized = None
    try:
        builder = trt.Builder(logger())
        mask = 0
        for name in network_flags:
            mask |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
        network = builder.create_network(mask)
        parser = trt.OnnxParser(network, logger())
        if not parser.parse_from_file(str(onnx_path)):  # external weights resolve beside the file
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise AvemoError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        for name in set_flags:
            config.set_flag(getattr(trt.BuilderFlag, name))
        for name in clear_flags:
            config.clear_flag(getattr(trt.BuilderFlag, name))
        for limit in limits:  # in bucket order: index k is bucket k (TrtBackend selects it by index)
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in limit.items():
                profile.set_shape(name, lo, opt, hi)
            if config.add_optimization_profile(profile) < 0:
                raise AvemoError(f"{onnx_path}: TensorRT refused the optimisation profile {limit}")
        cache = _timing_cache(config, timing_cache, log)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise AvemoError(f"{onnx_path}: TensorRT could not build an engine from it (see its log above)")
        return bytes(serialized), None if cache is None else bytes(cache.serialize())
    finally:  # children before their builder; a traceback keeps this frame, not these objects
        serialized = cache = profile = None
        parser = network = config = None
        builder = None


def _timing_cache(config: Any, path: Path | None, log: Callable[[str], None]) -> Any:
    """The timing cache to build with (read from ``path`` if it exists), or None where TensorRT refuses it."""
    if path is None:
        return None
    cache = config.create_timing_cache(path.read_bytes() if path.exists() else b"")
    if cache is None or not config.set_timing_cache(cache, False):
        log(f"WARNING: {path}: timing cache from another GPU or TensorRT version, not used and not overwritten")
        return None
    return cache


def check_built_engine(
    manifest: Manifest,
    modality: str,
    precision: str,
    engine: Path,
    device_id: int = 0,
    max_batch: int | None = None,
    buckets: Buckets | None = PROFILE_BUCKETS,
) -> tuple[dict[str, Any], int]:
    """Run the parity samples through a freshly built engine; (parity report, device memory) or AvemoError."""
    from avemo.runtime.backends.parity import load_references, max_abs_diff, parity_samples

    samples = parity_samples(manifest.features, [modality], manifest.faces_dtype)[modality]
    references = load_references(manifest.root / PARITY_FILE)[modality]
    with TrtBackend(
        manifest, modality, precision, device_id, engine=engine, max_batch=max_batch, buckets=buckets
    ) as runner:
        step = runner.max_batch
        diffs = []
        for sample, ref in zip(samples, references, strict=True):
            got = [runner.infer({k: v[i : i + step] for k, v in sample.items()}) for i in range(0, len(ref), step)]
            diffs.append(max_abs_diff(np.concatenate(got), ref))
        memory = runner.device_memory
    report = {"max_abs_diff": max(diffs), "per_sample": diffs, "tolerance": PARITY_TOLERANCE[precision]}
    if report["max_abs_diff"] > report["tolerance"]:
        raise AvemoError(
            f"{engine.name}: parity failed, max |probs diff| {report['max_abs_diff']:.2e} > "
            f"{report['tolerance']:.0e} against {PARITY_FILE}; the engine was not installed"
        )
    return report, memory
