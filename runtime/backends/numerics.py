"""fp16 numerics, checked where they can fail: a graph lint and a runner that honours every fp16 rounding.

ONNX Runtime on CPU cannot judge an fp16 graph: it runs fp16 ``Floor``/``Abs``/``Mul`` in fp32 and removes
fp32 -> fp16 -> fp32 cast pairs, even with optimisations off (NOTES-toolchain). A strongly typed TensorRT
engine computes exactly what the graph says, and so does ONNX's reference evaluator: that is the runner
every fp16 claim (`avemo verify`, export and calibration parity, the TensorRT double) is checked with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avemo.deps import require
from avemo.errors import AvemoError

ONNX_INSTALL = "pip install onnx (fp16 graphs are checked in ONNX's reference evaluator)"

#: Ops that turn a float into an integer-valued result: with an fp16 input they round lengths and indices.
ROUNDING_OPS = ("Floor", "Ceil", "Round")


def onnx_module() -> Any:
    return require("onnx", ONNX_INSTALL)


def fp16_integer_arithmetic(model: Any) -> list[str]:
    """Nodes that do integer arithmetic in fp16: ``Floor``/``Ceil``/``Round`` of an fp16 tensor, or a ``Cast``
    of an fp16 tensor to an integer type. Each is named with the tensor it reads; [] for a clean graph.

    Types come from ONNX shape inference over the graph (initializers' types need no external data).
    """
    onnx = onnx_module()
    tp = onnx.TensorProto
    integer = {tp.INT8, tp.INT16, tp.INT32, tp.INT64, tp.UINT8, tp.UINT16, tp.UINT32, tp.UINT64}
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            types[node.output[0]] = node.attribute[0].t.data_type
    found = []
    for node in graph.node:
        if not node.input or types.get(node.input[0]) != tp.FLOAT16:
            continue
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type in ROUNDING_OPS or (node.op_type == "Cast" and to in integer):
            what = f"Cast to {tp.DataType.Name(to)}" if node.op_type == "Cast" else node.op_type
            found.append(f"node {node.name or '(unnamed)'} ({what}) reads fp16 tensor {node.input[0]}")
    return found


def check_graph_numerics(path: Path) -> None:
    """Raise naming the first offending node when the graph at ``path`` does integer arithmetic in fp16."""
    found = fp16_integer_arithmetic(onnx_module().load(str(path), load_external_data=False))
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise AvemoError(
            f"{path}: integer arithmetic in fp16, which rounds lengths and indices wrong: {found[0]}{more}"
        )


def has_fp16(path: Path) -> bool:
    """Whether any tensor of the graph at ``path`` is fp16 (initializers, Casts or value types)."""
    onnx = onnx_module()
    graph = onnx.load(str(path), load_external_data=False).graph
    fp16 = onnx.TensorProto.FLOAT16
    return any(t.data_type == fp16 for t in graph.initializer) or any(
        a.name == "to" and a.i == fp16 for n in graph.node for a in n.attribute
    )


def product_ops(operand: Callable[[np.ndarray], np.ndarray] | None = None) -> list[type]:
    """Conv, MatMul and Gemm for the reference evaluator that multiply fp16 operands as TensorRT's fp16 kernels
    do: exact products accumulated in fp32, the result rounded to fp16. (NumPy has no fp16 BLAS: its own fp16
    products are 5-50x slower and round partial sums to fp16, which TensorRT does not.) ``operand`` maps
    each of the two product operands first (the TensorRT double rounds fp32 ones to TF32); biases untouched.
    """
    from onnx.reference.ops.op_conv import Conv as _Conv
    from onnx.reference.ops.op_gemm import Gemm_7
    from onnx.reference.ops.op_matmul import MatMul as _MatMul

    read = operand or (lambda x: x)

    def product(run: Callable[..., tuple], x: np.ndarray, w: np.ndarray, *rest: Any, **attributes: Any) -> tuple:
        if x.dtype == np.float16 or w.dtype == np.float16:
            wide = [None if r is None else r.astype(np.float32) for r in rest]
            (y,) = run(x.astype(np.float32), w.astype(np.float32), *wide, **attributes)
            return (y.astype(np.float16),)
        return run(read(x), read(w), *rest, **attributes)

    class Conv(_Conv):
        def _run(self, X: np.ndarray, W: np.ndarray, B: np.ndarray | None = None, **attributes: Any) -> tuple:
            return product(super()._run, X, W, B, **attributes)  # the evaluator's argument names

    class MatMul(_MatMul):
        def _run(self, a: np.ndarray, b: np.ndarray) -> tuple:
            return product(super()._run, a, b)

    class Gemm(Gemm_7):
        def _run(self, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, **attributes: Any) -> tuple:
            return product(super()._run, a, b, c, **attributes)

    for op in (Conv, MatMul, Gemm):
        op.op_domain = ""
    return [Conv, MatMul, Gemm]


def reference_evaluator(model: Any, operand: Callable[[np.ndarray], np.ndarray] | None = None) -> Any:
    """ONNX's reference evaluator over ``model`` with ``product_ops``: every op in the graph's own types."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=product_ops(operand))
