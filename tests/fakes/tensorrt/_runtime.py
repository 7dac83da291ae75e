"""The TensorRT double's runtime half: Runtime, ICudaEngine (the graph run in ONNX Runtime or the fp16 reference
evaluator) and IExecutionContext with TensorRT's shape, address and memory rules."""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from pycuda import driver as _cuda

from tensorrt import (
    _MAGIC,
    _MAJOR,
    EVENTS,
    ON_EXECUTE,
    PROFILE_SWITCHES,
    DataType,
    ExecutionContextAllocationStrategy,
    Logger,
    TensorIOMode,
    __version__,
    _error,
    _Owned,
    nptype,
)


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self.DLA_core = -1

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        if not data.startswith(_MAGIC):
            _error(self.logger, "not a serialized engine (or a corrupt one)")
            return None
        plan = json.loads(data[len(_MAGIC) :])
        if plan["version"] != __version__:
            _error(self.logger, f"engine built with TensorRT {plan['version']}, this is {__version__}")
            return None
        device = _cuda._current().device
        if tuple(plan["device"]["compute_capability"]) != device.compute_capability():
            _error(self.logger, "engine plan is not compatible with this device (compute capability)")
            return None
        return ICudaEngine(plan, self.logger)


class ICudaEngine(_Owned):
    def __init__(self, plan: dict[str, Any], logger: Logger) -> None:
        super().__init__()
        self.plan, self.logger = plan, logger
        self.tensors = {name: (TensorIOMode.INPUT, DataType(t), tuple(s), sym) for name, t, s, sym in plan["inputs"]}
        self.tensors |= {name: (TensorIOMode.OUTPUT, DataType(t), tuple(s), sym) for name, t, s, sym in plan["outputs"]}
        self._session: Any = None

    @property
    def num_io_tensors(self) -> int:
        self._check()
        return len(self.tensors)

    @property
    def num_optimization_profiles(self) -> int:
        self._check()
        return len(self.plan["profiles"])

    def get_tensor_name(self, index: int) -> str:
        self._check()
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        self._check()
        return self.tensors[name][0] if name in self.tensors else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        self._check()
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        self._check()
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        self._check()
        profiles = self.plan["profiles"]
        if not 0 <= profile_index < len(profiles) or name not in profiles[profile_index]:
            raise ValueError(f"{name}: no profile shape (profile {profile_index})")
        return [tuple(s) for s in profiles[profile_index][name]]

    @property
    def device_memory_size_v2(self) -> int:
        self._check()
        return int(self.plan["device_memory"])

    if _MAJOR < 11:

        @property
        def device_memory_size(self) -> int:
            return self.device_memory_size_v2

    def create_execution_context(
        self, strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC
    ) -> IExecutionContext:
        self._check()
        if _cuda._current() is not self._context:
            raise RuntimeError("create_execution_context in another CUDA context than the engine's")
        return IExecutionContext(self, strategy)

    def session(self) -> Any:
        if self._session is None:
            self._session = engine_runner(self.plan["onnx"], self.plan["tf32"])
        return self._session


def engine_runner(path: str, tf32: bool) -> Any:
    """What computes an engine built from the ONNX file at ``path`` (``run(None, feeds)``): see the header."""
    from avemo.runtime.backends.numerics import (  # avemo's fp16 reference: fp16 ops in fp16
        has_fp16,
        reference_evaluator,
    )

    if not (has_fp16(Path(path)) or tf32):
        import onnxruntime as ort

        # Without spin-waiting: TensorRT computes on the GPU and leaves the host's cores to the caller, whose
        # host-side work after a run (scripts/bench_host.py) spinning threads slowed up to 2x.
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    import onnx

    return reference_evaluator(onnx.load(path), operand=_tf32 if tf32 else None)


def _tf32(x: np.ndarray) -> np.ndarray:
    """Round float32 values to TF32 (10 explicit mantissa bits), as tensor cores read them."""
    if x.dtype != np.float32:
        return x  # fp16 and integer operands are read as they are
    bits = x.view(np.uint32)
    return ((bits + 0x1000) & np.uint32(0xFFFFE000)).view(np.float32)


class IExecutionContext(_Owned):
    def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy) -> None:
        super().__init__()
        EVENTS.append(("create", "IExecutionContext", True))
        self.engine = weakref.proxy(engine)
        self._engine_ref = weakref.ref(engine)
        self.logger = engine.logger
        self.strategy = strategy
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.profile = 0  # profile 0 is selected when a context is created
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None
        self._static = None
        if strategy == ExecutionContextAllocationStrategy.STATIC and engine.device_memory_size_v2:
            self._static = _cuda.mem_alloc(engine.device_memory_size_v2)

    def _live_engine(self) -> ICudaEngine:
        self._check()
        engine = self._engine_ref()
        if engine is None:
            raise RuntimeError("IExecutionContext used after its engine was destroyed")
        return engine

    def set_input_shape(self, name: str, shape: Any) -> bool:
        engine = self._live_engine()
        shape = tuple(int(d) for d in shape)
        if engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            _error(self.logger, f"set_input_shape: {name} is not an input of this engine")
            return False
        low, _, high = engine.get_tensor_profile_shape(name, self.profile)
        if len(shape) != len(low) or any(not a <= s <= b for a, s, b in zip(low, shape, high, strict=True)):
            _error(self.logger, f"set_input_shape: {name} {shape} is outside profile {self.profile}: {low}..{high}")
            return False
        self.shapes[name] = shape
        return True

    @property
    def active_optimization_profile(self) -> int:
        return self.profile

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        """Select a profile; as in TensorRT, every input shape must be set again before the next execute."""
        engine = self._live_engine()
        if not 0 <= profile_index < engine.num_optimization_profiles:
            _error(self.logger, f"set_optimization_profile_async: no profile {profile_index}")
            return False
        if profile_index != self.profile:
            self.profile = profile_index
            self.shapes.clear()
            PROFILE_SWITCHES.append(profile_index)
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        engine = self._live_engine()
        if name not in engine.tensors:
            _error(self.logger, f"set_tensor_address: no tensor {name}")
            return False
        self.addresses[name] = int(memory)
        return True

    def set_device_memory(self, memory: int, size: int) -> None:
        engine = self._live_engine()
        if size < engine.device_memory_size_v2:
            raise ValueError(f"set_device_memory: {size} bytes < device_memory_size_v2 {engine.device_memory_size_v2}")
        _cuda.resolve(int(memory), size)  # must be device memory that is there
        self.memory = (int(memory), size)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        engine = self._live_engine()
        mode, _, shape, symbols = engine.tensors[name]
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, shape)
        known = {}
        for input_name, given in self.shapes.items():
            for symbol, d in zip(engine.tensors[input_name][3], given, strict=True):
                if symbol:
                    known[symbol] = d
        return tuple(known.get(sym, -1) if d == -1 else d for d, sym in zip(shape, symbols, strict=True))

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self._live_engine()
        if _cuda._current() is not self._context:
            raise RuntimeError("execute_async_v3 in another CUDA context than the engine's")
        for hook in ON_EXECUTE:
            hook()
        inputs = [n for n, t in engine.tensors.items() if t[0] == TensorIOMode.INPUT]
        missing = [n for n in inputs if n not in self.shapes] + [n for n in engine.tensors if n not in self.addresses]
        if missing:
            _error(self.logger, f"execute_async_v3: shapes or addresses not set for {sorted(set(missing))}")
            return False
        if self.strategy == ExecutionContextAllocationStrategy.USER_MANAGED and self.memory is None:
            _error(self.logger, "execute_async_v3: USER_MANAGED context without set_device_memory()")
            return False
        feeds = {}
        for name in inputs:
            dtype = np.dtype(nptype(engine.tensors[name][1]))
            shape = self.shapes[name]
            raw = _cuda.resolve(self.addresses[name], int(np.prod(shape)) * dtype.itemsize)
            value = np.frombuffer(raw, dtype).reshape(shape).copy()
            feeds[name] = value
        with np.errstate(over="ignore", invalid="ignore"):  # the evaluator's Sigmoid: see runtime/backends/numerics.py
            results = engine.session().run(None, feeds)
        for (name, tensor), value in zip(
            ((n, t) for n, t in engine.tensors.items() if t[0] == TensorIOMode.OUTPUT), results, strict=True
        ):
            out = np.ascontiguousarray(value, nptype(tensor[1]))
            _cuda.resolve(self.addresses[name], out.nbytes)[:] = out.reshape(-1).view(np.uint8).tobytes()
        return True

    def __del__(self) -> None:
        super().__del__()
        if self._static is not None and self._context.alive:
            self._static.free()
