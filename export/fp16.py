"""Mixed-precision FP16 graph: fp32 inputs/outputs, numerically sensitive ops kept in fp32.

Made with onnxconverter-common (pure Python, no second onnxruntime; NVIDIA
ModelOpt's AutoCast pulls in onnxruntime-gpu, see NOTES-toolchain).
"""

from __future__ import annotations

import warnings

import onnx

#: Ops left in fp32: normalisation and softmax/reductions overflow or lose too much in fp16; Div is the
#: input normalisation ((x - mean) / std, std clamped at 1e-3 can leave fp16's range). No op here may
#: compute lengths or indices: the model keeps those integer or boolean (`runtime/backends/numerics.py` checks).
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Exp", "Log", "Pow", "Sqrt", "Div")


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "-1e4 will be truncated": the mask value, representable in fp16
        model = float16.convert_float_to_float16(proto, keep_io_types=True, op_block_list=blocked)
    # Shapes recorded for the example batch would be stale at other batch sizes.
    del model.graph.value_info[:]
    return model
