"""The TensorRT double's builder half: network, ONNX parser, builder config, profiles, timing cache, Builder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pycuda import driver as _cuda

from tensorrt import (
    _MAGIC,
    _MAJOR,
    _ONNX_TYPES,
    BuilderFlag,
    DeviceType,
    ITensor,
    Logger,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    __version__,
    _error,
    _Owned,
    nptype,
)


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


def _uint8_misuse(model: Any) -> str | None:
    """Why TensorRT's parser would refuse ``model`` (an onnx.ModelProto) for its uint8 inputs, or None: a UINT8
    network input may only be converted to float32/float16 (the DataType.UINT8 documentation)."""
    import onnx

    allowed = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    uint8 = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    for node in model.graph.node:
        for name in uint8.intersection(node.input):
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if node.op_type != "Cast" or to not in allowed:
                return f"{name}: a UINT8 input read by {node.op_type} ({node.name}), not by a Cast to float/half"
    return None


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
        import onnx
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(bytes(model), providers=["CPUExecutionProvider"])
        except Exception as exc:
            self.errors.append(ParserError(str(exc).splitlines()[0]))
            return False
        if problem := _uint8_misuse(onnx.load_from_string(bytes(model))):
            self.errors.append(ParserError(problem))
            return False
        self.network.inputs = _tensors(session.get_inputs())
        self.network.outputs = _tensors(session.get_outputs())
        return True

    def parse_from_file(self, path: str) -> bool:
        import onnx
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:
            self.errors.append(ParserError(f"{path}: {str(exc).splitlines()[0]}"))
            return False
        if problem := _uint8_misuse(onnx.load(path, load_external_data=False)):
            self.errors.append(ParserError(f"{path}: {problem}"))
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
        shapes = [p.shapes for p in config.profiles] or [{}]
        for profile in shapes:  # every profile must cover every dynamic input, within its fixed axes
            for tensor in network.inputs:
                if -1 in tensor.shape and tensor.name not in profile:
                    _error(self.logger, f"{tensor.name}: dynamic input without an optimization profile")
                    return None
                if tensor.name in profile:
                    low, _, high = profile[tensor.name]
                    fixed = [(d, lo, hi) for d, lo, hi in zip(tensor.shape, low, high, strict=False) if d != -1]
                    if len(low) != len(tensor.shape) or any(d != lo or d != hi for d, lo, hi in fixed):
                        _error(
                            self.logger, f"{tensor.name}: profile {profile[tensor.name]} does not fit {tensor.shape}"
                        )
                        return None
        largest = max(
            sum(int(np.prod(p[t.name][2])) * np.dtype(nptype(t.dtype)).itemsize for t in network.inputs if t.name in p)
            for p in shapes
        )
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
            "profiles": [{k: [list(s) for s in v] for k, v in p.items()} for p in shapes],
            # the double's stand-in for activation memory: four times the largest inputs of any profile
            # (TensorRT's device_memory_size_v2 is the most any profile needs)
            "device_memory": 4 * largest,
        }
        if config.cache is not None:
            config.cache.entries += 1
        return IHostMemory(_MAGIC + json.dumps(plan).encode())
