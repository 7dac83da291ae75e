"""TEST DOUBLE of ``pycuda.driver`` (a subset), enforcing CUDA's rules that avemo's code must respect.

Not pycuda: device memory is host memory here. What it enforces, as the real
driver does:
- every allocation, copy, stream and event needs a current context (else ``LogicError``);
- a context that was detached (its last reference released) is gone: using it,
  or memory, streams and events made in it, raises ``LogicError``;
- device memory is counted per device and limited (``MemoryError`` past the
  limit); ``free()`` twice raises;
- async copies need page-locked host memory; sizes must fit the allocation;
  every host-to-device copy is recorded in ``HTOD`` (the page-locked
  allocation it read, its bytes), so tests count the copies per call;
- ``pagelocked_empty(..., mem_flags=host_alloc_flags.DEVICEMAP)`` is mapped
  (zero-copy) memory: its device pointer aliases the host array, and
  ``Device.get_attribute(device_attribute.INTEGRATED)`` says whether the GPU
  shares memory with the host (Jetson).

Devices come from ``AVEMO_DOUBLE_GPUS``: ``name:major.minor:memory_mb:integrated``
entries separated by ``;`` (default ``NVIDIA Jetson Orin Nano:8.7:8192:1``). ``none``
means no device is visible: ``init()`` then fails as cuInit does (``RuntimeError``,
CUDA_ERROR_NO_DEVICE), as in a container started without NVIDIA's runtime.
"""

from __future__ import annotations

import os
import threading
import time
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np


class Error(Exception):
    pass


class LogicError(Error):
    pass


class MemoryError(Error):
    pass


class RuntimeError(Error):  # pycuda's own name: pycuda.driver.RuntimeError shadows the builtin there too
    pass


class device_attribute(IntEnum):
    INTEGRATED = 18
    CAN_MAP_HOST_MEMORY = 19


class host_alloc_flags(IntEnum):
    PORTABLE = 1
    DEVICEMAP = 2


def _devices() -> list[tuple[str, tuple[int, int], int, bool]]:
    spec = os.environ.get("AVEMO_DOUBLE_GPUS", "NVIDIA Jetson Orin Nano:8.7:8192:1")
    out = []
    for entry in spec.split(";"):
        name, cc, memory, integrated = entry.split(":")
        major, minor = cc.split(".")
        out.append((name, (int(major), int(minor)), int(memory) << 20, integrated == "1"))
    return out


_initialised = False
_local = threading.local()
_lock = threading.Lock()
_ALLOCATIONS: dict[int, Allocation] = {}
_next_pointer = 0x7F0000000000
USED: dict[int, int] = {}  # device index -> bytes of device memory in use (the tests read it)
PEAK: dict[int, int] = {}
HTOD: list[tuple[HostAllocation | None, int]] = []  # (page-locked source, bytes) of every host-to-device copy


def init(flags: int = 0) -> None:
    global _initialised
    if os.environ.get("AVEMO_DOUBLE_GPUS") == "none":
        raise RuntimeError("cuInit failed: no CUDA-capable device is detected")
    _initialised = True


def _need_init() -> None:
    if not _initialised:
        raise LogicError("cuInit has not been called (pycuda.driver.init())")


def _stack() -> list[Context]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _current() -> Context:
    stack = _stack()
    if not stack:
        raise LogicError("invalid device context - no currently active context?")
    context = stack[-1]
    context._check()
    return context


class Context:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.alive = True
        self.references = 1

    def _check(self) -> None:
        if not self.alive:
            raise LogicError("context was destroyed (used after detach)")

    def push(self) -> None:
        self._check()
        _stack().append(self)

    @staticmethod
    def pop() -> None:
        stack = _stack()
        if not stack:
            raise LogicError("cannot pop: no context is current")
        stack.pop()

    def detach(self) -> None:
        """Release this reference; the last one destroys the context (and everything made in it)."""
        self._check()
        self.references -= 1
        if self.references == 0:
            self.alive = False
            stack = _stack()
            while self in stack:
                stack.remove(self)

    @staticmethod
    def get_current() -> Context | None:
        stack = _stack()
        return stack[-1] if stack else None

    @staticmethod
    def synchronize() -> None:
        _current()

    def get_device(self) -> Device:
        return self.device


class Device:
    _primary: ClassVar[dict[int, Context]] = {}

    def __init__(self, index: int) -> None:
        _need_init()
        if not 0 <= index < len(_devices()):
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {index}")
        self.index = index
        self._name, self._cc, self._memory, self._integrated = _devices()[index]

    @staticmethod
    def count() -> int:
        _need_init()
        return len(_devices())

    def name(self) -> str:
        return self._name

    def compute_capability(self) -> tuple[int, int]:
        return self._cc

    def total_memory(self) -> int:
        return self._memory

    def get_attribute(self, attribute: device_attribute) -> int:
        if attribute == device_attribute.INTEGRATED:
            return int(self._integrated)
        if attribute == device_attribute.CAN_MAP_HOST_MEMORY:
            return 1
        raise LogicError(f"attribute {attribute} not known to the double")

    def make_context(self, flags: int = 0) -> Context:
        context = Context(self)
        context.push()
        return context

    def retain_primary_context(self) -> Context:
        """The device's primary context (one per device and process); each call adds a reference."""
        with _lock:
            context = Device._primary.get(self.index)
            if context is None or not context.alive:
                context = Device._primary[self.index] = Context(self)
            else:
                context.references += 1
        return context


def mem_get_info() -> tuple[int, int]:
    device = _current().device
    used = USED.get(device.index, 0)
    return device.total_memory() - used, device.total_memory()


class Allocation:
    """Device memory: a bytearray owned by one context (or an alias of mapped host memory)."""

    def __init__(self, size: int, context: Context, buffer: memoryview | None = None) -> None:
        global _next_pointer
        self.context = context
        self.size = size
        self.mapped = buffer is not None
        self.buffer = buffer if buffer is not None else memoryview(bytearray(size))
        self.freed = False
        with _lock:
            self.pointer = _next_pointer
            _next_pointer += (size + 0xFFF) & ~0xFFF or 0x1000
            _ALLOCATIONS[self.pointer] = self
            if not self.mapped:
                index = context.device.index
                USED[index] = USED.get(index, 0) + size
                PEAK[index] = max(PEAK.get(index, 0), USED[index])

    def __int__(self) -> int:
        self._check()
        return self.pointer

    def __index__(self) -> int:
        return self.__int__()

    def _check(self) -> None:
        if self.freed:
            raise LogicError("device memory used after free()")
        self.context._check()

    def free(self) -> None:
        if self.freed:
            raise LogicError("cuMemFree failed: freed twice")
        self.context._check()
        self.freed = True
        with _lock:
            del _ALLOCATIONS[self.pointer]
            if not self.mapped:
                USED[self.context.device.index] -= self.size


def mem_alloc(size: int) -> Allocation:
    context = _current()
    device = context.device
    if USED.get(device.index, 0) + size > device.total_memory():
        raise MemoryError(f"cuMemAlloc failed: out of memory ({size} bytes more than the device has free)")
    return Allocation(int(size), context)


def resolve(pointer: int, nbytes: int) -> memoryview:
    """The bytes at a device pointer (for the TensorRT double); LogicError for memory that is not there."""
    for base, allocation in _ALLOCATIONS.items():
        if base <= pointer < base + max(allocation.size, 1):
            allocation._check()
            offset = pointer - base
            if offset + nbytes > allocation.size:
                raise LogicError(f"access of {nbytes} bytes at +{offset} overruns a {allocation.size}-byte allocation")
            return allocation.buffer[offset : offset + nbytes]
    raise LogicError(f"illegal address {pointer:#x}: no allocation there")


class HostAllocation(bytearray):
    """Page-locked host memory (an array's ``.base``); mapped ones have a device pointer aliasing it."""

    alias: Allocation | None = None

    def get_device_pointer(self) -> int:
        if self.alias is None:
            raise LogicError("host memory was not allocated with host_alloc_flags.DEVICEMAP")
        return int(self.alias)


def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    context = _current()
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    memory = HostAllocation(count * dtype.itemsize)
    if mem_flags & host_alloc_flags.DEVICEMAP:
        memory.alias = Allocation(len(memory), context, memoryview(memory))
    return np.ndarray(shape, dtype, buffer=memory, order=order)  # .base is the HostAllocation, as in pycuda


def _pagelocked(host: Any) -> HostAllocation | None:
    while host is not None:
        if isinstance(host, HostAllocation):
            return host
        host = host.obj if isinstance(host, memoryview) else getattr(host, "base", None)
    return None


def _check_host(host: np.ndarray) -> None:
    # Stricter than CUDA, which turns an async copy from pageable memory into a synchronous one:
    # avemo stages every transfer in page-locked buffers, and the double holds it to that.
    if _pagelocked(host) is None:
        raise LogicError("async copy with pageable host memory: stage it in pagelocked_empty() memory")


class Stream:
    def __init__(self, flags: int = 0) -> None:
        self.context = _current()
        self.handle = id(self) & 0xFFFFFFFF

    def synchronize(self) -> None:
        self.context._check()

    def is_done(self) -> bool:
        return True


def _check_stream(stream: Stream) -> None:
    stream.context._check()
    if _current() is not stream.context:
        raise LogicError("stream belongs to another context than the current one")


def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Stream | None = None) -> None:
    if stream is not None:
        _check_host(src)
        _check_stream(stream)
    data = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
    HTOD.append((_pagelocked(src), data.nbytes))
    resolve(int(dest), data.nbytes)[:] = data  # as a DMA: no host copy in between


def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Stream | None = None) -> None:
    if stream is not None:
        _check_host(dest)
        _check_stream(stream)
    raw = np.frombuffer(resolve(int(src), dest.nbytes), dest.dtype, count=dest.size)
    dest[...] = raw.reshape(dest.shape)


memcpy_htod = memcpy_htod_async
memcpy_dtoh = memcpy_dtoh_async


class Event:
    def __init__(self, flags: int = 0) -> None:
        self.context = _current()
        self.at: float | None = None

    def record(self, stream: Stream | None = None) -> Event:
        self.context._check()
        if stream is not None:
            _check_stream(stream)
        self.at = time.perf_counter()
        return self

    def synchronize(self) -> Event:
        return self

    def time_till(self, later: Event) -> float:
        if self.at is None or later.at is None:
            raise LogicError("cuEventElapsedTime failed: event not recorded")
        return 1000.0 * (later.at - self.at)

    def time_since(self, earlier: Event) -> float:
        return earlier.time_till(self)


def get_driver_version() -> int:
    return 12060


def reset() -> None:
    """Forget every context and allocation (between tests)."""
    global _initialised
    _initialised = False
    Device._primary.clear()
    _ALLOCATIONS.clear()
    USED.clear()
    PEAK.clear()
    HTOD.clear()
    _local.stack = []
