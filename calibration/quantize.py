"""INT8 graphs from one fp32 graph: ModelOpt explicit Q/DQ (for TensorRT) and ONNX Runtime's CPU quantizer.

Both quantizers run on CPU with the same calibration reader. What stays in
higher precision is decided here once (``keep_nodes``) and passed to both.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from avemo.calibration.data import CalibrationReader
from avemo.contract import LENGTHS_OF, PRECISION_DIRS, PROBS, TENSORRT_DIRS, WEIGHTS_FILE, graph_file
from avemo.deps import require
from avemo.errors import AvemoError
from avemo.export.fp16 import FP32_OPS, input_head
from avemo.export.weights import share_weights
from avemo.process import child_pool
from avemo.train.cache import CacheSplit

#: `--method`: what ModelOpt offers for INT8. (ONNX Runtime's own histogram calibrators,
#: entropy and percentile, fail on clips of different lengths: they stack every clip's
#: activations into one array. Its min/max calibrator streams, so the CPU candidate uses it.)
METHODS = ("entropy", "max")
CPU_METHOD = "max"
#: What ONNX Runtime's CPU candidate quantizes: the products, where int8 pays (see _quantize_ort).
PRODUCT_OPS = ("Conv", "MatMul", "Gemm")
#: Ops ModelOpt never quantizes for INT8 (they stay fp32 in the Q/DQ graph): recorded in the manifest.
UNQUANTIZED_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "Sigmoid", "Div")
#: The documented default of what else stays in fp32: each branch's first conv and the last FC.
DEFAULT_KEEP = ("first-conv", "last-fc")
MODELOPT_INSTALL = "pip install 'avemo[calibrate]'"


def keep_nodes(model: onnx.ModelProto, defaults: bool = True, patterns: tuple[str, ...] = ()) -> dict[str, str]:
    """Node name -> why it stays fp32: the default sensitive nodes plus names matching ``patterns`` (regex)."""
    nodes = list(model.graph.node)
    keep: dict[str, str] = {}
    if defaults:
        # The data inputs (float audio, uint8 faces), not the lengths.
        for name in (i.name for i in model.graph.input if i.name in LENGTHS_OF):
            _, conv = input_head(model, name)
            if conv is not None:
                keep[conv.name] = f"first conv after {name}"
        fcs = [n for n in nodes if n.op_type in ("Gemm", "MatMul")]
        if fcs:
            keep[fcs[-1].name] = f"last fully connected layer before {PROBS}"
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise AvemoError(f"--keep {pattern!r} is not a regular expression ({exc})") from None
        hits = [n.name for n in nodes if regex.search(n.name)]
        if not hits:
            raise AvemoError(f"--keep {pattern!r} matches no node of the graph")
        keep.update({h: f"--keep {pattern}" for h in hits if h not in keep})
    return keep


@dataclass(frozen=True)
class QuantJob:
    """Graphs to quantize with one tool; picklable, so it runs in a fresh process (see ``run_isolated``)."""

    sources: dict[str, Path]  # modality -> fp32 graph
    keep: dict[str, tuple[str, ...]]  # modality -> node names kept in fp32
    cache: Path
    split: str
    clips: tuple[int, ...]
    method: str
    tool: str = "modelopt"  # "modelopt": Q/DQ for TensorRT; "ort": ONNX Runtime's CPU int8 graph
    fp16_dir: str | None = None  # also write each graph with its unquantized parts in fp16 here (for TensorRT)


def run_isolated(job: QuantJob, out: Path) -> dict[str, dict[str, onnx.ModelProto]]:
    """Quantize in a spawned process and load the results: folder ("" or ``job.fp16_dir``) -> modality -> graph.

    Importing ModelOpt patches ONNX Runtime's quantizer in place (plain ONNX
    Runtime calls then fail), so each tool gets a clean interpreter.
    """
    with child_pool(1) as pool:  # it ends with this process, even killed
        pool.submit(quantize, job, out).result()
    folders = ["", *([job.fp16_dir] if job.fp16_dir else [])]
    return {
        f: {m: onnx.load(str(out / f / src.name), load_external_data=True) for m, src in job.sources.items()}
        for f in folders
    }


def quantize_set(job: QuantJob, out: Path) -> dict[str, Any]:
    """Quantize every graph of ``job`` into ``out`` (and ``out/job.fp16_dir``), one shared weight file per
    folder; returns each graph's scales."""
    with tempfile.TemporaryDirectory() as tmp:
        sets = run_isolated(job, Path(tmp))
    for folder, graphs in sets.items():
        for modality, graph in graphs.items():
            count = quantized_nodes(graph)
            if not count or count != quantized_nodes(sets[""][modality]):
                where = folder or "."
                raise AvemoError(f"{job.sources[modality]}: the quantizer wrote {count} Q/DQ nodes into {where}")
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        share_weights(graphs, target / WEIGHTS_FILE)
        for modality, graph in graphs.items():
            onnx.save(graph, target / graph_file(modality))
            onnx.checker.check_model(str(target / graph_file(modality)))
    return {modality: scales(graph, out) for modality, graph in sets[""].items()}


def tensorrt_subdir(precision: str) -> str:
    """Where TensorRT's copy of a ModelOpt set goes, inside that set's folder."""
    return str(Path(TENSORRT_DIRS[precision]).relative_to(PRECISION_DIRS[precision]))


def quantize(job: QuantJob, out: Path) -> None:
    """Write the INT8 graph of each of ``job.sources`` into ``out``, same name (+ its external data)."""
    if job.method not in METHODS:
        raise AvemoError(f"unknown calibration method {job.method!r} (choose {', '.join(METHODS)})")
    split = CacheSplit(job.cache, job.split)
    out.mkdir(parents=True, exist_ok=True)
    for modality, src in job.sources.items():
        target = out / src.name
        reader = CalibrationReader(split, list(job.clips), modality)
        with _quiet():
            if job.tool == "ort":
                _quantize_ort(src, target, reader, job.keep[modality])
            else:
                _quantize_modelopt(src, target, reader, job.method, job.keep[modality])
        if not target.exists():
            raise AvemoError(f"{src}: the quantizer wrote no graph")
        if job.fp16_dir:
            (out / job.fp16_dir).mkdir(exist_ok=True)
            with _quiet():
                _save(fp16_high_precision(onnx.load(str(target))), out / job.fp16_dir / src.name)


def _quantize_modelopt(src: Path, out: Path, reader: CalibrationReader, method: str, keep: tuple[str, ...]) -> None:
    moq = require("modelopt.onnx.quantization", MODELOPT_INSTALL)
    moq.quantize(
        str(src),
        quantize_mode="int8",
        calibration_data_reader=reader,
        calibration_method=method,
        calibration_eps=["cpu"],
        high_precision_dtype="fp32",  # the fp16 default would turn the rest of a CPU graph into fp16
        nodes_to_exclude=[f"^{re.escape(n)}$" for n in keep],
        use_external_data_format=True,
        output_path=str(out),
        log_level="ERROR",
    )


def fp16_high_precision(model: onnx.ModelProto) -> onnx.ModelProto:
    """The Q/DQ graph with everything unquantized in fp16 but ``FP32_OPS`` (as the fp16 export keeps them).

    What ModelOpt's ``high_precision_dtype="fp16"`` does after calibration (its AutoCast ``convert_to_f16``),
    applied to the graph already calibrated: the same scales, quantized nodes and kept nodes, at half the bytes
    and TensorRT's fp16 kernels for the rest. Inputs and outputs stay fp32.
    """
    autocast = require("modelopt.onnx.autocast", MODELOPT_INSTALL)
    return autocast.convert_to_f16(model, low_precision_type="fp16", keep_io_types=True, op_block_list=list(FP32_OPS))


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")


def _quantize_ort(src: Path, out: Path, reader: CalibrationReader, keep: tuple[str, ...]) -> None:
    """ONNX Runtime static quantization for its CPU kernels: QDQ, uint8 activations, per-channel int8 weights.

    Only the products (Conv, MatMul, Gemm) are quantized, as ModelOpt does: quantizing every op ONNX Runtime
    can (its default) also quantized the -1e4 masks (Where, Add, MaxPool) to a calibrated range, so padded
    positions leaked into valid ones and a clip's answer moved by up to 0.11 when padded into a batch.
    (QOperator format failed on these graphs in ONNX Runtime 1.32: "unknown initializers silu".)
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=list(keep),
        op_types_to_quantize=list(PRODUCT_OPS),
        use_external_data_format=True,
        extra_options={"WeightSymmetric": True},
    )


def scales(model: onnx.ModelProto, base_dir: Path) -> dict[str, list[float]]:
    """Quantized tensor name -> its scale(s), from every QuantizeLinear / DequantizeLinear node.

    ``base_dir`` is the graph's folder: per-channel scales of a large model live in its external weight file,
    whose location is relative to the graph, not to the working directory.
    """
    init = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant" and n.attribute}
    out: dict[str, list[float]] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            tensor = init.get(node.input[1]) or consts.get(node.input[1])
            if tensor is not None:
                out[f"{node.op_type}:{node.input[0]}"] = (
                    numpy_helper.to_array(tensor, str(base_dir)).astype(np.float64).ravel().tolist()
                )
    return out


def quantized_nodes(model: onnx.ModelProto) -> int:
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


@contextlib.contextmanager
def _quiet():
    """The quantizers print per-tensor progress; keep our own progress lines readable."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    except BaseException:
        sys.stderr.write(sink.getvalue()[-4000:])  # the quantizer's own last words
        raise
