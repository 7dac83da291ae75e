"""ONNX's reference evaluator as a backend: every fp16 rounding honoured, as a strongly typed TensorRT engine.

Slow (NumPy, one op at a time: seconds for a 30-s clip, docs/BENCHMARKS.md), exact in the graph's own
types, products accumulated in fp32 as TensorRT's are (``avemo.runtime.backends.numerics``). Every fp16
parity claim is checked with it. External data is read relative to the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from avemo.errors import AvemoError
from avemo.runtime.backends.base import BackendBase, InputSpec, fixed_axes
from avemo.runtime.backends.numerics import onnx_module, reference_evaluator


class ReferenceBackend(BackendBase):
    """Runs one graph in ONNX's reference evaluator: ``infer({input name: array}) -> probs``."""

    kind = "onnx-reference"

    def __init__(self, path: Path) -> None:
        onnx = onnx_module()
        self.path = Path(path)
        try:
            model = onnx.load(str(self.path))
        except Exception as exc:  # onnx raises its own types for a bad or truncated file
            raise AvemoError(f"{self.path}: ONNX cannot load it ({str(exc).splitlines()[0]})") from None
        self.input_specs = tuple(
            InputSpec(
                i.name,
                np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)),
                fixed_axes([d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]),
            )
            for i in model.graph.input
        )
        self.session = reference_evaluator(model)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = self.checked(inputs)
        # The evaluator's Sigmoid computes both branches of np.where: the unused one overflows in fp16.
        with np.errstate(over="ignore", invalid="ignore"):
            out = self.session.run(None, feeds)[0]
        return np.asarray(out, np.float32)

    def close(self) -> None:
        super().close()
        self.__dict__.pop("session", None)  # the evaluator holds the graph's weights
