"""TensorRT: running an engine (torch-free; tensorrt and pycuda imported lazily). Building is ``build``.

Written against the TensorRT 10/11 Python API (``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``, user-managed execution-context memory). CUDA contexts and memory are
``avemo.runtime.backends.gpu``'s; engine names, profiles and version rules ``engines``'.
Neither package installs on our build machines: the tests drive this code with
test doubles of both (``tests/fakes``) whose engines run the ONNX graph in
ONNX Runtime. It has not run on a GPU yet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import PROBS
from avemo.errors import AvemoError
from avemo.runtime.backends.base import BackendBase, InputSpec, fixed_axes
from avemo.runtime.backends.engines import (
    Device,
    batch_limit,
    buffer_bytes,
    check_engine,
    check_io,
    engine_path,
    profiles,
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


def _pad(array: np.ndarray, low: tuple[int, ...]) -> np.ndarray:
    """Zero-pad every axis shorter than the profile minimum (time axes: the lengths keep the real size)."""
    short = [max(0, lo - n) for n, lo in zip(array.shape, low, strict=True)]
    return np.pad(array, [(0, s) for s in short]) if any(short) else array


class TrtBackend(BackendBase):
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

    kind = "tensorrt"

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
        self.input_specs = tuple(
            InputSpec(
                s["name"],
                np.dtype(s["dtype"]),
                fixed_axes(s["shape"]),
                self.limits[s["name"]][0],
                self.limits[s["name"]][2],
            )
            for s in manifest.inputs(modality)
        )
        self.specs = {s.name: s.dtype for s in self.input_specs} | {PROBS: np.dtype(np.float32)}
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
            self.refuse_closed()
            with active(self.device_id):
                yield

    def prepared(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays the engine gets: checked (``check_inputs``: beyond the profile is refused), typed,
        contiguous, padded up to the profile minimum."""
        return {
            name: np.ascontiguousarray(_pad(array, self.limits[name][0]))
            for name, array in self.checked(inputs).items()
        }

    def infer(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
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
