"""ONNX Runtime backend: the embedded default on CPU (CUDA / TensorRT providers when installed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import ORT_PROVIDERS
from avemo.deps import require
from avemo.errors import AvemoError
from avemo.runtime.backends.base import BackendBase, InputSpec, fixed_axes

#: ONNX Runtime's tensor type names -> numpy (the types avemo's graphs and YuNet take).
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
}


#: Whether ONNX Runtime's threads spin-wait after a run, per workload: the one place this is decided, from
#: scripts/bench_spinning.py (docs/BENCHMARKS.md, "ONNX Runtime spinning per workload"). "pipeline": decoding and
#: face detection run beside the graphs (the Recognizer: files, streams, Triton's avemo_media; YuNet); spinning
#: took the decoder's cores (1.1-3.1x slower per file or stream). "inference": graphs alone (the profiler,
#: Triton's graph models, parity, calibration, doctor); spinning gained 0-12 % on a quiet 2-core machine and
#: cost 1.4-3.1x on the same machine under load, and these share their machine too (Triton's avemo_media
#: decodes beside the graph models): off until a machine whose cores serve nothing else measures otherwise.
SPINNING = {"pipeline": False, "inference": False}


def session_options(threads: int | None = None, workload: str = "pipeline") -> Any:
    """ONNX Runtime settings for every session avemo opens (the emotion graphs and YuNet); ``workload``: a
    key of SPINNING."""
    ort = require("onnxruntime", "pip install 'avemo[runtime]'")
    if workload not in SPINNING:
        raise AvemoError(f"unknown workload {workload!r}; expected one of {', '.join(SPINNING)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if SPINNING[workload] else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def providers_for(name: str) -> list[str]:
    """ONNX Runtime's providers for ``--ort-provider NAME``; refused when this onnxruntime lacks the first
    (ONNX Runtime itself would only warn and run on the CPU)."""
    ort = require("onnxruntime", "pip install 'avemo[runtime]'")
    wanted = list(ORT_PROVIDERS[name])
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise AvemoError(
            f"--ort-provider {name}: this onnxruntime has no {wanted[0]} (it has {', '.join(available)}); "
            "install onnxruntime-gpu in place of onnxruntime (one of the two, never both)"
        )
    return [p for p in wanted if p in available]


class OrtBackend(BackendBase):
    """Runs one graph in an ONNX Runtime session: ``infer({input name: array}) -> probs [B, 6]``."""

    kind = "onnxruntime"

    def __init__(
        self, path: Path, threads: int | None = None, providers: list[str] | None = None, workload: str = "pipeline"
    ) -> None:
        """``workload``: a key of SPINNING (what runs beside this session)."""
        ort = require("onnxruntime", "pip install 'avemo[runtime]'")
        options = session_options(threads, workload)
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for a bad file
            raise AvemoError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
        unknown = [f"{i.name} ({i.type})" for i in self.session.get_inputs() if i.type not in ORT_TYPES]
        if unknown:
            raise AvemoError(f"{path}: inputs of a type avemo does not feed: {', '.join(unknown)}")
        self.input_specs = tuple(
            InputSpec(i.name, np.dtype(ORT_TYPES[i.type]), fixed_axes(i.shape)) for i in self.session.get_inputs()
        )

    def infer(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = self.checked(inputs)  # first: a closed backend has no session
        return self.session.run(None, feeds)[0]

    def close(self) -> None:
        super().close()
        self.__dict__.pop("session", None)  # ONNX Runtime frees the session's memory with its last reference
