"""FLOPs of a graph and the machine's GEMM rate: how close the best graph comes to the hardware."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def graph_flops(path: Path, inputs: dict[str, np.ndarray]) -> float:
    """Multiply-add FLOPs (2 per MAC) of Conv, MatMul and Gemm at these inputs (the rest is not counted)."""
    return float(sum(node_flops(path, inputs).values()))


def node_flops(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Node name -> multiply-add FLOPs (2 per MAC) of each Conv, MatMul and Gemm at these inputs."""
    onnx = _require_onnx()
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    known = {i.name for i in model.graph.initializer}
    wanted = list(dict.fromkeys(t for n in nodes for t in (*n.input[:2], n.output[0]) if t and t not in known))
    outputs = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in outputs and name not in {i.name for i in model.graph.input}:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    model_bytes = model.SerializeToString()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = _session_with_weights(ort, model_bytes, path, options)
    names = [o.name for o in session.get_outputs()]
    shapes = {n: v.shape for n, v in zip(names, session.run(None, inputs), strict=True)}
    shapes.update({k: v.shape for k, v in inputs.items()})
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes.update(weights)
    flops: dict[str, float] = {}
    for node in nodes:
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            macs = np.prod(shapes[node.input[1]][1:])
        elif node.op_type == "MatMul":
            macs = shapes[node.input[0]][-1]
        else:
            a = shapes[node.input[0]]
            macs = a[0] if any(at.name == "transA" and at.i for at in node.attribute) else a[-1]
        flops[node.name] = float(2.0 * np.prod(out) * macs)
    return flops


def _session_with_weights(ort: Any, model_bytes: bytes, path: Path, options: Any) -> Any:
    """An ORT session of a changed graph whose weights stay in the original's external-data file."""
    tmp = Path(path).with_name(f".flops-{os.getpid()}-{Path(path).name}")
    tmp.write_bytes(model_bytes)
    try:
        return ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    finally:
        tmp.unlink(missing_ok=True)


def gemm_rate(threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    """Sustained float32 GEMM rate (FLOP/s) of ONNX Runtime's CPU provider with ``threads`` threads."""
    onnx = _require_onnx()
    import onnxruntime as ort

    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [size, size]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.random((size, size), dtype=np.float32) for n in ("a", "b")}
    session.run(None, feeds)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feeds)
        runs += 1
    return 2.0 * size**3 * runs / (time.perf_counter() - started)


def op_breakdown(path: Path, inputs: dict[str, np.ndarray], threads: int, runs: int = 10) -> dict[str, float]:
    """Where ONNX Runtime's CPU time goes: ms per call by operator type (its own profiler), largest first."""
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, inputs)  # warm-up, excluded below
        session.end_profiling()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + event["dur"] / 1000.0 / runs
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def _require_onnx() -> Any:
    from avemo.deps import require

    return require("onnx", "pip install onnx (FLOP counting reads the graph)")
