"""TensorRT: running an engine (torch-free; tensorrt and pycuda imported lazily). Building is ``build``.

Written against the TensorRT 10/11 Python API (``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``, user-managed execution-context memory). CUDA contexts and memory are
``avemo.runtime.backends.gpu``'s; engine names, profiles and version rules ``engines``'.
Neither package installs on our build machines: the tests drive this code with
test doubles of both (``tests/fakes``) whose engines run the ONNX graph in
ONNX Runtime. It has not run on a GPU yet.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import PROBS, PROFILE_BUCKETS
from avemo.errors import AvemoError
from avemo.runtime.backends.base import BackendBase, InputSpec, Shape, Staged, check_profile, fixed_axes, write_padded
from avemo.runtime.backends.engines import (
    Buckets,
    Device,
    batch_limit,
    bucket_profiles,
    buffer_bytes,
    check_engine,
    check_io,
    engine_path,
    pick_profile,
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


#: Page-locked input sets per backend: one call writes its batch while another call's engine runs.
STAGING_SLOTS = 2


class TrtBackend(BackendBase):
    """Runs one engine: ``infer({input: array}) -> probs``; same interface as OrtBackend.

    Engines of one device share the process's primary CUDA context and, through
    ``scratch``, one device allocation for their activations (user-managed
    execution-context memory sized to the largest): a Recognizer holds one
    activation area, not three. Engines have one optimisation profile per
    length bucket (``PROFILE_BUCKETS``, recorded in the sidecar; older engines
    one): a batch is written once, zero-padded within its bucket
    (``pick_profile``), straight into page-locked memory (``staging``), outside
    any lock; only the engine run holds the scratch's lock. Inputs longer than
    the profiles' maximum are refused with the reason. ``close()`` (or ``with``) releases the
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
        buckets: Buckets | None = PROFILE_BUCKETS,
    ) -> None:
        """``engine``: a given (candidate) engine file, not yet installed; ``max_batch`` and ``buckets`` then
        say its batch limit and length buckets (an installed engine's come from its sidecar)."""
        cuda = driver()
        info = gpu_info(device_id)
        device = current_device(device_id, info)
        path = engine or engine_path(manifest.root, device, modality, precision)
        if engine is None:
            meta = check_engine(path, device, manifest)
            max_batch, buckets = meta.get("max_batch"), meta.get("buckets")
        self.path, self.device_id = path, device_id
        self.max_batch = batch_limit(manifest, max_batch)
        self.limits = bucket_profiles(manifest, modality, self.max_batch, buckets)
        whole = profiles(manifest, modality, self.max_batch)
        self.input_specs = tuple(
            InputSpec(s["name"], np.dtype(s["dtype"]), fixed_axes(s["shape"]), whole[s["name"]][0], whole[s["name"]][2])
            for s in manifest.inputs(modality)
        )
        self.specs = {s.name: s.dtype for s in self.input_specs} | {PROBS: np.dtype(np.float32)}
        self.scratch = scratch or DeviceScratch(device_id)
        self._lock = threading.Lock()
        self.closed = False
        self.last_phases_ms: dict[str, float] = {}
        self.events: list[Any] = []
        self.buffers: dict[str, IOBuffer] = {}
        self.profile = 0  # the execution context's active profile (0 when created)
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(STAGING_SLOTS):
            self._slots.put(slot)
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
            check_io(self.engine, manifest, modality, path, trt.nptype, self.limits)
            self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            self.device_memory = int(self.engine.device_memory_size_v2)
            self.scratch.reserve(self.device_memory, self._attach)
            self.stream = cuda.Stream()
            # timed: CUDA events around H2D, compute and D2H of every call (for `avemo profile`).
            self.events = [cuda.Event() for _ in range(4)] if timed else []
            for name, size in buffer_bytes(manifest, modality, self.max_batch).items():
                slots = 1 if name == PROBS else STAGING_SLOTS  # the output is read under the lock
                self.buffers[name] = IOBuffer(size, self.specs[name], mapped=mapped, slots=slots)
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
        with self.scratch.lock:
            self.refuse_closed()
            with active(self.device_id):
                yield

    @contextmanager
    def staging(self, shapes: Mapping[str, Shape]) -> Iterator[Staged]:
        """Page-locked arrays to write a batch of ``shapes`` into, padded within its length bucket (write every
        element: ``write_padded``), and the run that hands them to the engine. Waits for a free slot (two),
        never for the engine: another call may be running meanwhile."""
        for spec in self.input_specs:
            check_profile(spec, tuple(shapes[spec.name]), self.path.name)
        index, padded = pick_profile(self.limits, {s.name: tuple(shapes[s.name]) for s in self.input_specs})
        slot = self._slots.get()
        try:
            with self._lock:  # against close() freeing the buffers while the views are made
                self.refuse_closed()
                arrays = {name: self.buffers[name].view(shape, slot) for name, shape in padded.items()}
            yield Staged(arrays, lambda staged: self._run(staged, slot, index))
        finally:
            self._slots.put(slot)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        arrays = self.checked(inputs)  # typed and contiguous: a copy only where the dtype differs
        with self.staging({name: array.shape for name, array in arrays.items()}) as staged:
            for name, array in arrays.items():
                write_padded(staged.arrays[name], array)
            return staged.run()

    def _run(self, arrays: dict[str, np.ndarray], slot: int, profile: int) -> np.ndarray:
        self.checked(arrays)  # the lengths against the frames written; no copy (typed, contiguous)
        with self._active():
            self._mark(0)  # after the host-side staging: "h2d" is the transfer alone
            if profile != self.profile:  # on the call's stream; the input shapes must be set again after it
                if not self.context.set_optimization_profile_async(profile, self.stream.handle):
                    raise AvemoError(f"{self.path.name}: TensorRT refused optimisation profile {profile}")
                self.profile = profile
            for name, array in arrays.items():
                buffer = self.buffers[name]
                buffer.to_device(array, self.stream)
                if not self.context.set_tensor_address(name, buffer.addresses[slot]):
                    raise AvemoError(f"{self.path.name}: TensorRT has no tensor {name}")
                if not self.context.set_input_shape(name, array.shape):
                    raise AvemoError(f"{name}: TensorRT refused shape {array.shape} (profile {self.limits[profile]})")
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
        with self.scratch.lock, self._lock:
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
