"""TEST DOUBLE of NVIDIA TensorRT's Python API (the subset avemo uses). Not TensorRT.

Its engines run the parsed ONNX graph in ONNX Runtime, reading inputs from and
writing outputs to the pycuda double's device memory, so probabilities through
avemo's whole TensorRT path (buffers, shapes, copies, streams) are real. It
enforces what real TensorRT enforces, as documented for 10.x / 11.x:

- ``set_input_shape`` returns False (and logs an error) for a shape outside
  the optimisation profile, a wrong rank, an output or an unknown name;
  ``set_tensor_address`` returns False for an unknown name; ``execute_async_v3``
  returns False until every input shape and every address is set (and, for a
  USER_MANAGED context, device memory of at least ``device_memory_size_v2``);
- a build fails (``None``, error logged) for a dynamic input without a profile,
  for FP16/INT8 builder flags on a strongly typed network, and without a current
  CUDA context; on 11.x the precision flags do not exist (AttributeError);
- numerics as a strongly typed engine computes them: a network that carries
  fp16 (an AutoCast fp16 or int8/fp16 Q/DQ graph) runs in ONNX's reference
  evaluator as avemo's ``runtime/models/numerics.py`` sets it up, every fp16 op in
  fp16 and fp16 products accumulated in fp32 (ONNX Runtime on CPU would compute
  the fp16 ops in fp32 and hide fp16 rounding); fp32 networks run in ONNX Runtime;
- TF32 is on by default, as in TensorRT: with it, the fp32 operands of Conv,
  MatMul and Gemm (activations and weights, not biases) are rounded to TF32's
  10-bit mantissa, and nothing else is, so a build that leaves TF32 on misses
  fp32 parity as a real one can;
- an engine deserialises only with the same TensorRT version and compute
  capability it was built with (else ``None``, error logged); a timing cache
  from another device is refused by ``set_timing_cache`` (False);
- every object (builder, network, parser, config, serialized plan, runtime
  objects) belongs to the CUDA context current when it was made: using one after
  that context is gone raises, one released after it is recorded in
  ``LATE_RELEASES`` (a crash at exit with real TensorRT), and every release is
  logged in ``EVENTS`` with whether its context was current, beside each
  execution context's creation, so tests can check what was freed where and
  before what;
- device memory (STATIC contexts) is counted in the pycuda double.

The version comes from ``AVEMO_DOUBLE_TRT_VERSION`` (default 10.3.0, JetPack
6.1/6.2), DLA cores from ``AVEMO_DOUBLE_DLA_CORES`` (default 0), read at import.
"""

from __future__ import annotations

import json
import os
import sys
import weakref
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
from pycuda import driver as _cuda

__version__ = os.environ.get("AVEMO_DOUBLE_TRT_VERSION", "10.3.0")
_MAJOR = int(__version__.split(".")[0])
_MAGIC = b"AVEMO-TRT-DOUBLE\n"

LOGGERS: list[Any] = []  # every Logger made (real TensorRT wants one per process)
LOGGED: list[tuple[int, str]] = []  # (severity, message) of everything logged at WARNING or worse
LATE_RELEASES: list[str] = []  # TensorRT objects released after their CUDA context was destroyed
#: ("release", class, its context current?) for every object released; ("create", "IExecutionContext", True).
EVENTS: list[tuple[str, str, bool]] = []


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity
        LOGGERS.append(self)

    def log(self, severity: int, msg: str) -> None:
        if severity <= Logger.WARNING:
            LOGGED.append((severity, msg))
        if severity <= self.min_severity:
            print(f"[TensorRT double] {msg}", file=sys.stderr)


class DataType(IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


_NUMPY = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}
_ONNX_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64}


def nptype(dtype: DataType) -> type:
    return _NUMPY[dtype]


class TensorIOMode(IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


_BUILDER_FLAGS = [
    "FP16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
    "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "BF16", "FP8",
]  # fmt: skip
_REMOVED_IN_11 = {"FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
BuilderFlag = IntEnum(  # type: ignore[misc]
    "BuilderFlag", {n: i for i, n in enumerate(_BUILDER_FLAGS) if _MAJOR < 11 or n not in _REMOVED_IN_11}
)


class MemoryPoolType(IntEnum):
    WORKSPACE = 0


class DeviceType(IntEnum):
    GPU = 0
    DLA = 1


class ExecutionContextAllocationStrategy(IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


def _error(logger: Logger, message: str) -> None:
    logger.log(Logger.ERROR, message)


class _Owned:
    """Something made in a CUDA context: unusable once that context is gone. Runtime objects need a current
    context; build objects take the current one if any (ModelOpt's plugin scan makes them without one)."""

    def __init__(self, needs_context: bool = True) -> None:
        self._context = _cuda._current() if needs_context else _cuda.Context.get_current()
        self._what = type(self).__name__

    def _check(self) -> None:
        if self._context is not None and not self._context.alive:
            raise RuntimeError(f"{self._what} used after its CUDA context was destroyed")

    def __del__(self) -> None:
        if self._context is not None and not self._context.alive:
            LATE_RELEASES.append(self._what)
        EVENTS.append(("release", self._what, _cuda.Context.get_current() is self._context))


class ITensor:
    def __init__(self, name: str, dtype: DataType, shape: tuple[int, ...], symbols: tuple[str | None, ...]) -> None:
        self.name, self.dtype, self.shape, self.symbols = name, dtype, shape, symbols


def init_libnvinfer_plugins(logger: Logger, namespace: str) -> bool:
    """The built-in plugins (the double has none to register)."""
    return True


class INetworkDefinition(_Owned):
    """The parsed network's inputs and outputs. The double models no layers (``num_layers`` is 0), so a
    scan for custom plugin layers, such as ModelOpt's before quantizing, finds none: true of avemo's graphs."""

    num_layers = 0

    def __init__(self, flags: int) -> None:
        super().__init__(needs_context=False)
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx: str | None = None

    def get_flag(self, flag: NetworkDefinitionCreationFlag) -> bool:
        return (_MAJOR >= 11 and flag == NetworkDefinitionCreationFlag.STRONGLY_TYPED) or bool(self.flags & (1 << flag))

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]


def _tensors(nodes: list[Any]) -> list[ITensor]:
    out = []
    for node in nodes:
        shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
        symbols = tuple(d if isinstance(d, str) else None for d in node.shape)
        out.append(ITensor(node.name, _ONNX_TYPES[node.type], shape, symbols))
    return out


class ParserError:
    def __init__(self, message: str) -> None:
        self.message = message

    def desc(self) -> str:
        return self.message

    def __str__(self) -> str:
        return self.message


class OnnxParser(_Owned):
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        super().__init__(needs_context=False)
        self.network, self.logger, self.errors = network, logger, []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> ParserError:
        return self.errors[index]

    def parse(self, model: bytes) -> bool:
        """A serialized model without external data (TensorRT's ``parse``): checked, not kept for building."""
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(bytes(model), providers=["CPUExecutionProvider"])
        except Exception as exc:
            self.errors.append(ParserError(str(exc).splitlines()[0]))
            return False
        self.network.inputs = _tensors(session.get_inputs())
        self.network.outputs = _tensors(session.get_outputs())
        return True

    def parse_from_file(self, path: str) -> bool:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:
            self.errors.append(ParserError(f"{path}: {str(exc).splitlines()[0]}"))
            return False
        self.network.onnx = str(Path(path).resolve())
        self.network.inputs = _tensors(session.get_inputs())
        self.network.outputs = _tensors(session.get_outputs())
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        self.valid = True

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        shapes = tuple(tuple(int(d) for d in s) for s in (min, opt, max))
        if len({len(s) for s in shapes}) != 1 or any(not a <= b <= c for a, b, c in zip(*shapes, strict=True)):
            self.valid = False
            return
        self.shapes[input] = shapes

    def get_shape(self, input: str) -> list[tuple[int, ...]]:
        return list(self.shapes[input])


class ITimingCache:
    def __init__(self, device: str, entries: int = 0) -> None:
        self.device, self.entries = device, entries

    def serialize(self) -> bytes:
        return json.dumps({"timing-cache-double": self.device, "entries": self.entries}).encode()


def _device_tag(context: Any) -> str:
    device = context.device
    return f"{device.name()} sm{''.join(map(str, device.compute_capability()))}"


class IBuilderConfig(_Owned):
    def __init__(self) -> None:
        super().__init__(needs_context=False)
        self.flags = {BuilderFlag.TF32}  # on by default, as in TensorRT
        self.pools: dict[MemoryPoolType, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.cache: ITimingCache | None = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile.valid:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
        if not serialized_timing_cache:
            return ITimingCache(_device_tag(_cuda._current()))
        try:
            data = json.loads(bytes(serialized_timing_cache))
            return ITimingCache(data["timing-cache-double"], data["entries"])
        except (ValueError, KeyError):
            return None

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache.device != _device_tag(_cuda._current()) and not ignore_mismatch:
            return False
        self.cache = cache
        return True


class IHostMemory(bytes, _Owned):
    def __init__(self, data: bytes) -> None:
        _Owned.__init__(self, needs_context=False)

    @property
    def nbytes(self) -> int:
        return len(self)


class Builder(_Owned):
    def __init__(self, logger: Logger) -> None:
        super().__init__(needs_context=False)
        self.logger = logger

    @property
    def num_DLA_cores(self) -> int:
        return int(os.environ.get("AVEMO_DOUBLE_DLA_CORES", "0"))

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        try:
            context = _cuda._current()
        except _cuda.LogicError as exc:
            _error(self.logger, f"no CUDA context: {exc}")
            return None
        if network.onnx is None:
            _error(self.logger, "the network is empty (nothing was parsed)")
            return None
        typed = network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        precision_flags = {f.name for f in config.flags} & {"FP16", "INT8", "BF16", "FP8"}
        if typed and precision_flags:
            _error(
                self.logger, f"precision flags {sorted(precision_flags)} are not allowed on a strongly typed network"
            )
            return None
        profile = config.profiles[0].shapes if config.profiles else {}
        for tensor in network.inputs:
            if -1 in tensor.shape and tensor.name not in profile:
                _error(self.logger, f"{tensor.name}: dynamic input without an optimization profile")
                return None
            if tensor.name in profile:
                low, _, high = profile[tensor.name]
                fixed = [(d, lo, hi) for d, lo, hi in zip(tensor.shape, low, high, strict=False) if d != -1]
                if len(low) != len(tensor.shape) or any(d != lo or d != hi for d, lo, hi in fixed):
                    _error(self.logger, f"{tensor.name}: profile {profile[tensor.name]} does not fit {tensor.shape}")
                    return None
        largest = sum(int(np.prod(profile[t.name][2])) * np.dtype(nptype(t.dtype)).itemsize for t in network.inputs)
        device = context.device
        plan = {
            "version": __version__,
            "device": {"name": device.name(), "compute_capability": list(device.compute_capability())},
            "onnx": network.onnx,
            "strongly_typed": typed,
            "tf32": BuilderFlag.TF32 in config.flags,
            "flags": sorted(f.name for f in config.flags),
            "workspace_bytes": config.pools.get(MemoryPoolType.WORKSPACE),
            "inputs": [[t.name, int(t.dtype), list(t.shape), list(t.symbols)] for t in network.inputs],
            "outputs": [[t.name, int(t.dtype), list(t.shape), list(t.symbols)] for t in network.outputs],
            "profile": {k: [list(s) for s in v] for k, v in profile.items()},
            # the double's stand-in for activation memory: four times the largest inputs
            "device_memory": 4 * largest,
        }
        if config.cache is not None:
            config.cache.entries += 1
        return IHostMemory(_MAGIC + json.dumps(plan).encode())


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
        return 1

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
        if profile_index != 0 or name not in self.plan["profile"]:
            raise ValueError(f"{name}: no profile shape (profile {profile_index})")
        return [tuple(s) for s in self.plan["profile"][name]]

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
    from avemo.runtime.models.numerics import has_fp16, reference_evaluator  # avemo's fp16 reference: fp16 ops in fp16

    if not (has_fp16(Path(path)) or tf32):
        import onnxruntime as ort

        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
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
        low, _, high = engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(low) or any(not a <= s <= b for a, s, b in zip(low, shape, high, strict=True)):
            _error(self.logger, f"set_input_shape: {name} {shape} is outside the profile {low}..{high}")
            return False
        self.shapes[name] = shape
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
        with np.errstate(over="ignore", invalid="ignore"):  # the evaluator's Sigmoid: see runtime/models/numerics.py
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
