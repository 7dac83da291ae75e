"""ONNX Runtime backend: the embedded default on CPU (CUDA / TensorRT providers when installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avemo.deps import require
from avemo.errors import AvemoError


class OrtBackend:
    """Runs one graph: ``infer({input name: array}) -> probs [B, 6]``."""

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        ort = require("onnxruntime", "pip install 'avemo[runtime]'")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for a bad file
            raise AvemoError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
        self.path = Path(path)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise AvemoError(f"{self.path.name}: missing inputs {sorted(missing)}")
        return self.session.run(None, {name: inputs[name] for name in self.input_names})[0]
