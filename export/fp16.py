"""Mixed-precision FP16 graph: fp32 inputs/outputs, numerically sensitive ops and the faces' head kept in fp32.

Made with onnxconverter-common (pure Python, no second onnxruntime; NVIDIA
ModelOpt's AutoCast pulls in onnxruntime-gpu, see NOTES-toolchain).
"""

from __future__ import annotations

import warnings

import onnx

from avemo.contract import FACES

#: Ops left in fp32: normalisation and softmax/reductions overflow or lose too much in fp16; Div is the
#: input normalisation ((x - mean) / std, std clamped at 1e-3 can leave fp16's range). No op here may
#: compute lengths or indices: the model keeps those integer or boolean (`runtime/backends/numerics.py` checks).
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Exp", "Log", "Pow", "Sqrt", "Div")


def input_head(model: onnx.ModelProto, name: str) -> tuple[list[onnx.NodeProto], onnx.NodeProto | None]:
    """The nodes that carry input ``name``'s values to its first Conv, with the Shape nodes that read them (not
    followed: they lead to the lengths and masks), and that Conv (None without one)."""
    reached, head = {name}, []
    for node in model.graph.node:  # ONNX nodes are topologically sorted
        if reached.intersection(node.input):
            if node.op_type == "Conv":
                return head, node
            head.append(node)
            if node.op_type != "Shape":
                reached.update(node.output)
    return head, None


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    # The uint8 faces' Cast, /255, reshape and ImageNet normalisation stay fp32 up to the first conv.
    head = [n.name for n in input_head(proto, FACES)[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "-1e4 will be truncated": the mask value, representable in fp16
        model = float16.convert_float_to_float16(proto, keep_io_types=True, op_block_list=blocked, node_block_list=head)
    _drop_round_trips(model, set(head))
    # Shapes recorded for the example batch would be stale at other batch sizes.
    del model.graph.value_info[:]
    return model


def _drop_round_trips(model: onnx.ModelProto, head: set[str]) -> None:
    """The converter casts every blocked node's output to fp16, and back for each blocked reader: within the
    faces' head those round trips go (the readers take the fp32 tensor), so the head computes in fp32 throughout."""
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    nodes = list(model.graph.node)
    produced = {out for n in nodes if n.name in head for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for down in nodes:
        if not (_is_cast(down, fp16) and down.input[0] in produced):
            continue
        ups = readers.get(down.output[0], [])
        if not ups or not all(_is_cast(up, fp32) for up in ups):
            continue
        for up in ups:
            for reader in readers.get(up.output[0], []):
                reader.input[:] = [down.input[0] if name == up.output[0] else name for name in reader.input]
            model.graph.node.remove(up)
        model.graph.node.remove(down)


def _is_cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)
