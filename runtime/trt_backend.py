"""TensorRT: engine builder and pycuda backend (torch-free; tensorrt and pycuda imported lazily).

Written against the TensorRT 10/11 Python API (``build_serialized_network``,
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``); the
version rules are in ``avemo.runtime.engines.build_flags``. Neither package can
be installed on our build machines: the tests drive this code with fake
``tensorrt`` / ``pycuda`` modules; it has not yet run on a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import PROBS
from avemo.errors import AvemoError
from avemo.io import atomic_write_bytes
from avemo.runtime.engines import Device, buffer_bytes, build_flags, check_engine, engine_path, profiles, write_sidecar
from avemo.runtime.manifest import Manifest

TRT_HINT = "pip install 'avemo[trt]' (on Jetson: JetPack's python3-libnvinfer, and pycuda built on the device)"


@contextmanager
def _needs_trt() -> Iterator[None]:
    """Wrap the lazy ``import tensorrt`` / ``import pycuda.driver``: a missing one is a one-line error.

    The imports stay plain import statements so that mypy checks every TensorRT
    call against the published TensorRT type stubs.
    """
    try:
        yield
    except ImportError as exc:
        raise AvemoError(f"{exc.name or 'tensorrt'} is not installed; install it with: {TRT_HINT}") from None


def current_device(device_id: int = 0) -> Device:
    """The GPU (name, compute capability) and TensorRT version of this machine."""
    with _needs_trt():
        import pycuda.driver as cuda
        import tensorrt as trt
    cuda.init()
    gpu = cuda.Device(device_id)
    return Device(gpu.name(), tuple(gpu.compute_capability()), trt.__version__)


def build_engine(
    manifest: Manifest,
    modality: str,
    precision: str,
    device: Device,
    workspace_mb: int = 1024,
    timing_cache: Path | None = None,
    dla_core: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Build, serialise and describe one engine; returns its path."""
    with _needs_trt():
        import tensorrt as trt
    network_flags, config_flags = build_flags(trt.__version__, precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = manifest.graph_path(modality, precision)
    if not parser.parse_from_file(str(onnx_path)):  # external weights resolve beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AvemoError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for name in config_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profiles(manifest, modality).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AvemoError(f"{onnx_path}: TensorRT could not build a {precision} engine (see its log above)")
    path = engine_path(manifest.root, device, modality, precision)
    atomic_write_bytes(path, bytes(serialized))
    write_sidecar(path, device, manifest, modality, precision)
    if cache is not None and timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    log(f"built {path}")
    return path


class TrtBackend:
    """Runs one engine: ``infer({input: array}) -> probs``; same interface as OrtBackend.

    The backend owns its CUDA context, so any thread may call it (calls are
    serialised: one stream, one set of buffers). Pinned host buffers and device
    buffers are sized once for the profile's largest shapes and reused.
    ``close()`` (or ``with``) frees them.
    """

    def __init__(
        self, manifest: Manifest, modality: str, precision: str, device_id: int = 0, timed: bool = False
    ) -> None:
        with _needs_trt():
            import pycuda.driver as cuda
            import tensorrt as trt
        self.cuda = cuda
        device = current_device(device_id)
        path = engine_path(manifest.root, device, modality, precision)
        check_engine(path, device)
        self._lock = threading.Lock()
        self.context_cuda = cuda.Device(device_id).make_context()
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise AvemoError(f"{path}: TensorRT could not deserialise the engine; rebuild it with `avemo build`")
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
            # timed: CUDA events around H2D, compute and D2H of every call (for `avemo profile`).
            self.events = [cuda.Event() for _ in range(4)] if timed else []
            self.last_phases_ms: dict[str, float] = {}
            self.specs = {s["name"]: np.dtype(s["dtype"]) for s in manifest.data["graphs"][modality]["inputs"]}
            self.specs[PROBS] = np.dtype(np.float32)
            self.limits = profiles(manifest, modality)
            self.host: dict[str, Any] = {}
            self.device: dict[str, Any] = {}
            for name, size in buffer_bytes(manifest, modality).items():
                self.host[name] = cuda.pagelocked_empty(size // self.specs[name].itemsize, self.specs[name])
                self.device[name] = cuda.mem_alloc(size)
                self.context.set_tensor_address(name, int(self.device[name]))
        finally:
            self.context_cuda.pop()
        self.input_names = [n for n in self.specs if n != PROBS]
        self.closed = False

    @contextmanager
    def _active(self) -> Iterator[None]:
        if self.closed:
            raise AvemoError("TrtBackend is closed")
        with self._lock:
            self.context_cuda.push()
            try:
                yield
            finally:
                self.context_cuda.pop()

    def infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        cuda = self.cuda
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise AvemoError(f"missing inputs {sorted(missing)}")
        with self._active():
            self._mark(0)
            for name in self.input_names:
                array = np.ascontiguousarray(inputs[name], dtype=self.specs[name])
                lo, _, hi = self.limits[name]
                if len(array.shape) != len(hi) or any(
                    not a <= s <= b for a, s, b in zip(lo, array.shape, hi, strict=True)
                ):
                    raise AvemoError(f"{name}: shape {array.shape} is outside the engine's profile {lo}..{hi}")
                staged = self.host[name][: array.size].reshape(array.shape)
                staged[...] = array
                cuda.memcpy_htod_async(self.device[name], staged, self.stream)
                self.context.set_input_shape(name, array.shape)
            self._mark(1)
            if not self.context.execute_async_v3(self.stream.handle):
                raise AvemoError("TensorRT execute_async_v3 failed")
            self._mark(2)
            shape: tuple[int, ...] = tuple(self.context.get_tensor_shape(PROBS))
            out = self.host[PROBS][: int(np.prod(shape))]
            cuda.memcpy_dtoh_async(out, self.device[PROBS], self.stream)
            self._mark(3)
            self.stream.synchronize()
            if self.events:
                e = self.events
                self.last_phases_ms = {
                    name: e[k].time_till(e[k + 1]) for k, name in enumerate(("h2d", "compute", "d2h"))
                }
            return out.reshape(shape).copy()

    def _mark(self, i: int) -> None:
        if self.events:
            self.events[i].record(self.stream)

    def close(self) -> None:
        if self.closed:
            return
        with self._active():
            for buffer in self.device.values():
                buffer.free()
            self.device.clear()
            self.host.clear()
            del self.context, self.engine
        self.closed = True
        self.context_cuda.detach()

    def __enter__(self) -> TrtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
