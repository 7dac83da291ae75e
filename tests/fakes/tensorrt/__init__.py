"""TEST DOUBLE of NVIDIA TensorRT's Python API (the subset avemo uses). Not TensorRT.

Its engines run the parsed ONNX graph in ONNX Runtime (without spin-waiting, so
that the host's cores stay the caller's, as beside a GPU), reading inputs from and
writing outputs to the pycuda double's device memory, so probabilities through
avemo's whole TensorRT path (buffers, shapes, copies, streams) are real. It
enforces what real TensorRT enforces, as documented for 10.x / 11.x:

- ``set_input_shape`` returns False (and logs an error) for a shape outside
  the context's *selected* optimisation profile, a wrong rank, an output or an
  unknown name;
- several optimisation profiles: an engine has as many as the build config
  was given (each must cover every dynamic input); a context starts on profile
  0; ``set_optimization_profile_async`` returns False for an index out of
  range, and a switch forgets every input shape (they must be set again, as
  TensorRT invalidates them); ``device_memory_size_v2`` is what the largest
  profile needs; switches are recorded in ``PROFILE_SWITCHES``;
  ``set_tensor_address`` returns False for an unknown name; ``execute_async_v3``
  returns False until every input shape and every address is set (and, for a
  USER_MANAGED context, device memory of at least ``device_memory_size_v2``);
- the ONNX parser refuses (False, a parser error) a UINT8 network input read by anything but a Cast to
  float32/float16: TensorRT converts uint8 inputs to float before any other layer and to nothing else
  (``DataType.UINT8``; its Shape layer takes no uint8); an engine's I/O dtypes are the graph's, and
  ``execute_async_v3`` reads each input's bytes as that dtype;
- a build fails (``None``, error logged) for a dynamic input without a profile,
  for FP16/INT8 builder flags on a strongly typed network, and without a current
  CUDA context; on 11.x the precision flags do not exist (AttributeError);
- numerics as a strongly typed engine computes them: a network that carries
  fp16 (an AutoCast fp16 or int8/fp16 Q/DQ graph) runs in ONNX's reference
  evaluator as avemo's ``runtime/backends/numerics.py`` sets it up, every fp16 op in
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

For tests, every function in ``ON_EXECUTE`` is called at the start of each
``execute_async_v3`` (a test blocks there to hold an engine "running").

The version comes from ``AVEMO_DOUBLE_TRT_VERSION`` (default 10.3.0, JetPack
6.1/6.2), DLA cores from ``AVEMO_DOUBLE_DLA_CORES`` (default 0), read at import.
"""

from __future__ import annotations

import os
import sys
from enum import IntEnum
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
PROFILE_SWITCHES: list[int] = []  # the profile index of every switch any execution context made
ON_EXECUTE: list[Any] = []  # callables run at the start of every execute_async_v3 (tests block there)


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
_ONNX_TYPES = {
    "tensor(float)": DataType.FLOAT,
    "tensor(float16)": DataType.HALF,
    "tensor(int64)": DataType.INT64,
    "tensor(uint8)": DataType.UINT8,
}


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


# The builder and runtime halves live beside this file; they read the shared state above.
from tensorrt._builder import Builder as Builder  # noqa: E402
from tensorrt._builder import IBuilderConfig as IBuilderConfig  # noqa: E402
from tensorrt._builder import IHostMemory as IHostMemory  # noqa: E402
from tensorrt._builder import INetworkDefinition as INetworkDefinition  # noqa: E402
from tensorrt._builder import IOptimizationProfile as IOptimizationProfile  # noqa: E402
from tensorrt._builder import ITimingCache as ITimingCache  # noqa: E402
from tensorrt._builder import OnnxParser as OnnxParser  # noqa: E402
from tensorrt._builder import ParserError as ParserError  # noqa: E402
from tensorrt._runtime import ICudaEngine as ICudaEngine  # noqa: E402
from tensorrt._runtime import IExecutionContext as IExecutionContext  # noqa: E402
from tensorrt._runtime import Runtime as Runtime  # noqa: E402
from tensorrt._runtime import engine_runner as engine_runner  # noqa: E402
