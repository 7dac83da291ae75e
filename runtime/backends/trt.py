"""TensorRT: engine builder and runner (torch-free; tensorrt and pycuda imported lazily).

Written against the TensorRT 10/11 Python API (``build_serialized_network``,
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``, user-managed
execution-context memory). CUDA contexts and memory are ``avemo.runtime.backends.gpu``'s;
the network flags per precision are ``avemo.runtime.backends.engines.build_flags``.
Neither package installs on our build machines: the tests drive this code with
test doubles of both (``tests/fakes``) whose engines run the ONNX graph in
ONNX Runtime. It has not run on a GPU yet.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import PARITY_FILE, PROBS
from avemo.errors import AvemoError
from avemo.io import atomic_write_bytes
from avemo.runtime.backends.engines import (
    Device,
    batch_limit,
    buffer_bytes,
    build_flags,
    check_engine,
    check_io,
    default_max_batch,
    engine_path,
    profiles,
    write_sidecar,
)
from avemo.runtime.backends.gpu import (
    DeviceScratch,
    GpuInfo,
    IOBuffer,
    active,
    close_at_exit,
    driver,
    gpu_info,
    needs_trt,
)
from avemo.runtime.models.manifest import Manifest

_logger: Any = None
_logger_lock = threading.Lock()


def logger() -> Any:
    """The process's one TensorRT logger (TensorRT keeps the first one it is given)."""
    global _logger
    with _logger_lock:
        if _logger is None:
            with needs_trt():
                import tensorrt

            _logger = tensorrt.Logger(tensorrt.Logger.WARNING)
        return _logger


def current_device(device_id: int = 0, info: GpuInfo | None = None) -> Device:
    """The GPU (name, compute capability) and TensorRT version of device ``device_id`` (``info``: already read)."""
    with needs_trt():
        import tensorrt
    info = info or gpu_info(device_id)
    return Device(info.name, info.compute_capability, tensorrt.__version__)


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
) -> Path:
    """Build one engine on device ``device_id``, check it against parity.npz, then install it; returns its path.

    The engine is written beside its final name first and run on the parity
    samples; only an engine within the precision's tolerance is installed (its
    sidecar records the largest difference and its device memory). ``max_batch``:
    clips per call (default: ``default_max_batch`` for the GPU).
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
            onnx_path, build_flags(trt.__version__, precision), profiles(manifest, modality, max_batch),
            workspace_mb, timing_cache, log,
        )  # fmt: skip
        atomic_write_bytes(candidate, plan)
        if cache is not None and timing_cache is not None:
            atomic_write_bytes(timing_cache, cache)
    del plan  # the host copy too: a Jetson's GPU shares that memory with the parity run below
    try:
        parity, memory = check_built_engine(manifest, modality, precision, candidate, device_id, max_batch)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    candidate.replace(path)
    write_sidecar(path, device, manifest, modality, precision, max_batch, parity=parity, device_memory=memory)
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
    limits: dict[str, tuple[Any, Any, Any]],
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
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in limits.items():
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise AvemoError(f"{onnx_path}: TensorRT refused the optimisation profile {limits}")
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
    manifest: Manifest, modality: str, precision: str, engine: Path, device_id: int = 0, max_batch: int | None = None
) -> tuple[dict[str, Any], int]:
    """Run the parity samples through a freshly built engine; (parity report, device memory) or AvemoError."""
    from avemo.runtime.models.parity import TOLERANCE, load_references, max_abs_diff, parity_samples

    samples = parity_samples(manifest.features, [modality])[modality]
    references = load_references(manifest.root / PARITY_FILE)[modality]
    with TrtBackend(manifest, modality, precision, device_id, engine=engine, max_batch=max_batch) as runner:
        step = runner.max_batch
        diffs = []
        for sample, ref in zip(samples, references, strict=True):
            got = [runner.infer({k: v[i : i + step] for k, v in sample.items()}) for i in range(0, len(ref), step)]
            diffs.append(max_abs_diff(np.concatenate(got), ref))
        memory = runner.device_memory
    report = {"max_abs_diff": max(diffs), "per_sample": diffs, "tolerance": TOLERANCE[precision]}
    if report["max_abs_diff"] > report["tolerance"]:
        raise AvemoError(
            f"{engine.name}: parity failed, max |probs diff| {report['max_abs_diff']:.2e} > "
            f"{report['tolerance']:.0e} against {PARITY_FILE}; the engine was not installed"
        )
    return report, memory


def _pad(array: np.ndarray, low: tuple[int, ...]) -> np.ndarray:
    """Zero-pad every axis shorter than the profile minimum (time axes: the lengths keep the real size)."""
    short = [max(0, lo - n) for n, lo in zip(array.shape, low, strict=True)]
    return np.pad(array, [(0, s) for s in short]) if any(short) else array


class TrtBackend:
    """Runs one engine: ``infer({input: array}) -> probs``; same interface as OrtBackend.

    Engines of one device share the process's primary CUDA context and, through
    ``scratch``, one device allocation for their activations (user-managed
    execution-context memory sized to the largest): a Recognizer holds one
    activation area, not three. Calls are serialised per scratch. Inputs
    shorter than the profile minimum are zero-padded to it; longer than its
    maximum are refused with the reason. ``close()`` (or ``with``) releases the
    context, engine and buffers in that order, from any thread; backends still
    open at interpreter exit are closed before the CUDA contexts go.
    """

    def __init__(
        self,
        manifest: Manifest,
        modality: str,
        precision: str,
        device_id: int = 0,
        timed: bool = False,
        scratch: DeviceScratch | None = None,
        engine: Path | None = None,
        max_batch: int | None = None,
    ) -> None:
        """``engine``: a given (candidate) engine file, not yet installed; ``max_batch`` then says its batch
        limit (an installed engine's comes from its sidecar)."""
        cuda = driver()
        info = gpu_info(device_id)
        device = current_device(device_id, info)
        path = engine or engine_path(manifest.root, device, modality, precision)
        if engine is None:
            max_batch = check_engine(path, device, manifest).get("max_batch")
        self.path, self.device_id = path, device_id
        self.max_batch = batch_limit(manifest, max_batch)
        self.limits = profiles(manifest, modality, self.max_batch)
        self.specs = {s["name"]: np.dtype(s["dtype"]) for s in manifest.data["graphs"][modality]["inputs"]}
        self.input_names = list(self.specs)
        self.specs[PROBS] = np.dtype(np.float32)
        self.scratch = scratch or DeviceScratch(device_id)
        self._lock = threading.Lock()
        self.closed = False
        self.last_phases_ms: dict[str, float] = {}
        self.events: list[Any] = []
        self.buffers: dict[str, IOBuffer] = {}
        try:
            self._open(cuda, manifest, modality, path, info.integrated, timed)
        except BaseException:
            self.close()  # a half-open backend leaves no user in the shared area, nothing alive outside the context
            raise
        close_at_exit(self)

    def _open(self, cuda: Any, manifest: Manifest, modality: str, path: Path, mapped: bool, timed: bool) -> None:
        import tensorrt as trt  # found by current_device (needs_trt) already; a plain import, checked by mypy

        with active(self.device_id):
            runtime = trt.Runtime(logger())
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise AvemoError(f"{path}: TensorRT could not deserialise the engine; rebuild it with `avemo build`")
            check_io(self.engine, manifest, modality, path, trt.nptype, self.max_batch)
            self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            self.device_memory = int(self.engine.device_memory_size_v2)
            self.scratch.reserve(self.device_memory, self._attach)
            self.stream = cuda.Stream()
            # timed: CUDA events around H2D, compute and D2H of every call (for `avemo profile`).
            self.events = [cuda.Event() for _ in range(4)] if timed else []
            for name, size in buffer_bytes(manifest, modality, self.max_batch).items():
                self.buffers[name] = IOBuffer(size, self.specs[name], mapped=mapped)
                if not self.context.set_tensor_address(name, self.buffers[name].address):
                    raise AvemoError(f"{path}: TensorRT has no tensor {name}")

    def _attach(self, address: int, size: int) -> None:
        self.context.set_device_memory(address, size)

    @property
    def io_bytes(self) -> int:
        """Device memory of this backend's input and output buffers (0 where mapped)."""
        return sum(b.device_bytes for b in self.buffers.values())

    @contextmanager
    def _active(self) -> Iterator[None]:
        with self._lock, self.scratch.lock:
            if self.closed:
                raise AvemoError("TrtBackend is closed")
            with active(self.device_id):
                yield

    def prepared(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays the engine gets: typed, contiguous, padded up to the profile minimum; AvemoError beyond it."""
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise AvemoError(f"missing inputs {sorted(missing)}")
        out = {}
        for name in self.input_names:
            low, _, high = self.limits[name]
            array = np.ascontiguousarray(inputs[name], dtype=self.specs[name])
            if array.ndim != len(high):
                raise AvemoError(f"{name}: {array.ndim} dimensions, the engine takes {len(high)}")
            over = [(axis, n, hi) for axis, (n, hi) in enumerate(zip(array.shape, high, strict=True)) if n > hi]
            if over:
                axis, n, hi = over[0]
                hint = "call with fewer clips" if axis == 0 else "recognise long media in windows (--window)"
                what = "clips per batch" if axis == 0 else "frames"
                raise AvemoError(f"{name}: {n} {what}, more than the engine's profile takes ({hi}); {hint}")
            out[name] = np.ascontiguousarray(_pad(array, low))
        return out

    def infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        arrays = self.prepared(inputs)
        with self._active():
            staged = {name: self.buffers[name].stage(array) for name, array in arrays.items()}
            self._mark(0)  # after the host-side staging: "h2d" is the transfer alone
            for name, array in staged.items():
                self.buffers[name].to_device(array, self.stream)
                if not self.context.set_input_shape(name, array.shape):
                    raise AvemoError(f"{name}: TensorRT refused shape {array.shape} (profile {self.limits[name]})")
            self._mark(1)
            if not self.context.execute_async_v3(self.stream.handle):
                raise AvemoError(f"{self.path.name}: TensorRT execute_async_v3 failed (see its log)")
            self._mark(2)
            shape: tuple[int, ...] = tuple(self.context.get_tensor_shape(PROBS))
            out = self.buffers[PROBS].from_device(int(np.prod(shape)), self.stream)
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
        """Release the execution context, the engine, then the memory (a call in flight finishes first)."""
        with self._lock, self.scratch.lock:
            if self.closed:
                return
            self.closed = True
            with active(self.device_id):
                self.scratch.release(self._attach)
                for name in ("context", "engine"):  # released here, inside the context (set only when opened)
                    self.__dict__.pop(name, None)
                for buffer in self.buffers.values():
                    buffer.free()
                self.buffers.clear()
                self.__dict__.pop("stream", None)
                self.events.clear()

    def __enter__(self) -> TrtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
