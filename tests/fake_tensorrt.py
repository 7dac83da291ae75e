"""FAKE `tensorrt` and `pycuda.driver` modules for tests: they record calls and move bytes, nothing more.

Device memory is a dict of bytearrays; the fake engine's "inference" writes
probs[b, k] = lengths[b] / 1000 + k / 100 for the first *_lengths input, so a
test can tell that inputs reached the device and outputs came back.
"""

from __future__ import annotations

import types
from enum import IntEnum

import numpy as np

MEMORY: dict[int, bytearray] = {}
CALLS: list[tuple] = []


def make_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag(IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 5

    class BuilderFlag(IntEnum):
        FP16 = 0
        INT8 = 1
        GPU_FALLBACK = 2

    class MemoryPoolType(IntEnum):
        WORKSPACE = 0

    class DeviceType(IntEnum):
        GPU = 0
        DLA = 1

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            CALLS.append(("profile.set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Cache:
        def serialize(self):
            return b"TIMING-CACHE"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            CALLS.append(("config.set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            CALLS.append(("config.set_flag", flag.name))

        def add_optimization_profile(self, profile):
            CALLS.append(("config.add_optimization_profile",))

        def create_timing_cache(self, data):
            CALLS.append(("config.create_timing_cache", bytes(data)))
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            CALLS.append(("config.set_timing_cache", ignore_mismatch))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            CALLS.append(("builder.create_network", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            CALLS.append(("builder.build_serialized_network",))
            return memoryview(b"FAKE-ENGINE")

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            CALLS.append(("parser.parse_from_file", path))
            return True

    class Context:
        def __init__(self):
            self.addresses, self.shapes = {}, {}

        def set_tensor_address(self, name, address):
            CALLS.append(("context.set_tensor_address", name))
            self.addresses[name] = address

        def set_input_shape(self, name, shape):
            CALLS.append(("context.set_input_shape", name, tuple(shape)))
            self.shapes[name] = tuple(shape)

        def execute_async_v3(self, stream_handle):
            CALLS.append(("context.execute_async_v3", stream_handle))
            name = next(n for n in self.shapes if n.endswith("_lengths"))
            batch = self.shapes[name][0]
            lengths = np.frombuffer(MEMORY[self.addresses[name]], np.int64, count=batch)
            probs = (lengths[:, None] / 1000 + np.arange(6)[None, :] / 100).astype(np.float32)
            MEMORY[self.addresses["probs"]][: probs.nbytes] = probs.tobytes()
            return True

        def get_tensor_shape(self, name):
            return (next(iter(self.shapes.values()))[0], 6)

    class Engine:
        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            CALLS.append(("runtime.deserialize_cuda_engine", bytes(data)))
            return Engine()

    for obj in (
        Logger,
        NetworkDefinitionCreationFlag,
        BuilderFlag,
        MemoryPoolType,
        DeviceType,
        Builder,
        OnnxParser,
        Runtime,
    ):
        setattr(trt, obj.__name__, obj)
    return trt


def make_pycuda() -> tuple[types.ModuleType, types.ModuleType]:
    pycuda = types.ModuleType("pycuda")
    driver = types.ModuleType("pycuda.driver")

    class Allocation:
        def __init__(self, size):
            self.key = 1000 + len(MEMORY)
            MEMORY[self.key] = bytearray(size)

        def __int__(self):
            return self.key

        def free(self):
            CALLS.append(("mem.free", self.key))
            del MEMORY[self.key]

    class CudaContext:
        def push(self):
            CALLS.append(("ctx.push",))

        def pop(self):
            CALLS.append(("ctx.pop",))

        def detach(self):
            CALLS.append(("ctx.detach",))

    class Device:
        def __init__(self, index):
            pass

        def name(self):
            return "Fake GPU"

        def compute_capability(self):
            return (8, 7)

        def make_context(self):
            CALLS.append(("device.make_context",))
            return CudaContext()

    class Stream:
        handle = 42

        def synchronize(self):
            CALLS.append(("stream.synchronize",))

    def memcpy_htod_async(dest, host, stream):
        data = np.ascontiguousarray(host).tobytes()
        MEMORY[int(dest)][: len(data)] = data

    def memcpy_dtoh_async(host, src, stream):
        host[...] = np.frombuffer(MEMORY[int(src)], host.dtype, count=host.size).reshape(host.shape)

    class Event:
        """Records the order of calls; time_till returns the gap in recorded positions (ms)."""

        def record(self, stream):
            CALLS.append(("event.record",))
            self.at = len(CALLS)

        def time_till(self, later):
            return float(later.at - self.at)

    driver.init = lambda: None
    driver.Event = Event
    driver.Device = Device
    driver.Stream = Stream
    driver.pagelocked_empty = lambda n, dtype: np.empty(n, dtype)
    driver.mem_alloc = Allocation
    driver.memcpy_htod_async = memcpy_htod_async
    driver.memcpy_dtoh_async = memcpy_dtoh_async
    pycuda.driver = driver
    return pycuda, driver
