"""CUDA through pycuda (imported lazily): one context per device and process, and memory that owns itself.

- ``primary_context(device_id)``: the device's primary context, retained once per
  process and shared by every engine, context and buffer avemo makes on that
  device (what the CUDA runtime, PyTorch and TensorRT's own samples use), so
  nothing TensorRT made can outlive the context it was made in. At exit,
  every open backend is closed first, then the contexts are released.
- ``gpu_info(device_id)``: name, compute capability, memory, integrated or not.
- ``IOBuffer``: the host and device sides of one tensor. On a discrete GPU
  page-locked host arrays and a device allocation; on an integrated GPU
  (Jetson: one physical memory) mapped page-locked arrays whose device
  pointer TensorRT reads directly, so nothing is copied. Two host slots let
  one call write its batch while another's engine runs.
- ``DeviceScratch``: one device allocation for the activations of several
  TensorRT execution contexts (user-managed memory), sized to the largest,
  with a lock: the engines sharing it run one at a time.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from avemo.errors import AvemoError

TRT_HINT = "pip install 'avemo[trt]' (on Jetson: JetPack's python3-libnvinfer, and pycuda built on the device)"

_lock = threading.Lock()
_contexts: dict[int, Any] = {}
_closers: weakref.WeakSet[Any] = weakref.WeakSet()  # open backends, closed before the contexts at exit


@contextmanager
def needs_trt() -> Iterator[None]:
    """Wrap the lazy ``import tensorrt`` / ``import pycuda.driver``: a missing one is a one-line error.

    The imports stay plain import statements so that mypy checks every call
    against the published TensorRT type stubs.
    """
    try:
        yield
    except ImportError as exc:
        raise AvemoError(f"{exc.name or 'tensorrt'} is not installed; install it with: {TRT_HINT}") from None


def driver() -> Any:
    with needs_trt():
        import pycuda.driver as cuda
    try:
        cuda.init()
    except cuda.Error as exc:  # cuInit: no driver, no device, or a container started without NVIDIA's runtime
        raise AvemoError(
            f"CUDA cannot start ({exc}); check the NVIDIA driver (nvidia-smi) or the container's NVIDIA runtime"
        ) from None
    return cuda


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int
    integrated: bool  # shares physical memory with the CPU (Jetson)


def gpu_info(device_id: int = 0) -> GpuInfo:
    cuda = driver()
    count = cuda.Device.count()
    if not 0 <= device_id < count:
        raise AvemoError(f"--device {device_id}: this machine has {count} CUDA device(s) (0..{count - 1})")
    gpu = cuda.Device(device_id)
    integrated = bool(gpu.get_attribute(cuda.device_attribute.INTEGRATED))
    return GpuInfo(device_id, gpu.name(), tuple(gpu.compute_capability()), gpu.total_memory(), integrated)


def primary_context(device_id: int = 0) -> Any:
    """The device's primary context, retained once per process (not current: use ``active``)."""
    with _lock:
        if device_id not in _contexts:
            gpu_info(device_id)  # a clear error for a device that does not exist
            _contexts[device_id] = driver().Device(device_id).retain_primary_context()
        return _contexts[device_id]


@contextmanager
def active(device_id: int = 0) -> Iterator[Any]:
    """Make the device's primary context current in this thread for the block."""
    context = primary_context(device_id)
    context.push()
    try:
        yield context
    finally:
        context.pop()


def close_at_exit(closer: Any) -> None:
    """Close ``closer`` (anything with ``close()``) at interpreter exit, before the contexts go."""
    _closers.add(closer)


@atexit.register
def _release() -> None:
    for closer in list(_closers):
        closer.close()
    with _lock:
        for context in _contexts.values():
            context.detach()
        _contexts.clear()


class IOBuffer:
    """Host and device memory for one tensor of at most ``nbytes`` (allocate inside ``active``).

    ``slots`` page-locked host copies, so that one call can write its batch while another call's engine
    reads the previous one; on a discrete GPU they share one device allocation (copied under the caller's
    lock), mapped each is also what the engine reads (``addresses[slot]``)."""

    def __init__(self, nbytes: int, dtype: np.dtype, mapped: bool, slots: int = 1) -> None:
        cuda = self.cuda = driver()  # kept: the copies below run on every inference call
        self.dtype = np.dtype(dtype)
        count = max(1, nbytes // self.dtype.itemsize)
        self.mapped = mapped
        if mapped:  # one memory: the device pointer aliases the page-locked host array
            flags = cuda.host_alloc_flags.DEVICEMAP
            self.hosts = [cuda.pagelocked_empty(count, self.dtype, mem_flags=flags) for _ in range(slots)]
            self.device: Any = None
            self.addresses = [int(host.base.get_device_pointer()) for host in self.hosts]
        else:
            self.hosts = [cuda.pagelocked_empty(count, self.dtype) for _ in range(slots)]
            self.device = cuda.mem_alloc(count * self.dtype.itemsize)
            self.addresses = [int(self.device)] * slots
        self.device_bytes = 0 if mapped else count * self.dtype.itemsize

    @property
    def host(self) -> np.ndarray | None:
        return self.hosts[0] if self.hosts else None

    @property
    def address(self) -> int:
        return self.addresses[0]

    def view(self, shape: tuple[int, ...], slot: int = 0) -> np.ndarray:
        """Page-locked memory of ``slot`` as an array of ``shape``, to be written in place (not cleared)."""
        return self.hosts[slot][: int(np.prod(shape))].reshape(shape)

    def stage(self, array: np.ndarray, slot: int = 0) -> np.ndarray:
        """Copy ``array`` into the page-locked host memory; returns that view."""
        staged = self.view(array.shape, slot)
        staged[...] = array
        return staged

    def to_device(self, staged: np.ndarray, stream: Any) -> None:
        if not self.mapped:
            self.cuda.memcpy_htod_async(self.device, staged, stream)

    def from_device(self, count: int, stream: Any) -> np.ndarray:
        out = self.hosts[0][:count]
        if not self.mapped:
            self.cuda.memcpy_dtoh_async(out, self.device, stream)
        return out

    def free(self) -> None:
        if self.device is not None:
            self.device.free()
            self.device = None
        self.hosts = []


class DeviceScratch:
    """Device memory for TensorRT activations, shared by the execution contexts of one device."""

    def __init__(self, device_id: int = 0) -> None:
        self.device_id = device_id
        self.size = 0
        self.allocation: Any = None
        self.lock = threading.RLock()
        self.users: list[Callable[[int, int], None]] = []

    def reserve(self, size: int, attach: Callable[[int, int], None]) -> None:
        """Grow to ``size`` if needed (inside ``active``); ``attach(address, size)`` now and after any growth."""
        size = max(size, 1)
        with self.lock:
            self.users.append(attach)
            if size > self.size:
                if self.allocation is not None:
                    self.allocation.free()
                self.allocation = driver().mem_alloc(size)
                self.size = size
                for user in self.users:
                    user(int(self.allocation), self.size)
            else:
                attach(int(self.allocation), self.size)

    def release(self, attach: Callable[[int, int], None]) -> None:
        """Drop a user; the memory goes with the last one (inside ``active``)."""
        with self.lock:
            if attach in self.users:
                self.users.remove(attach)
            if not self.users and self.allocation is not None:
                self.allocation.free()
                self.allocation, self.size = None, 0
