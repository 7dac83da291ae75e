"""torch -> ONNX for one graph, onnxsim, and sample inputs for parity checks."""

from __future__ import annotations

import logging
import warnings

import onnx
import torch

from avemo.contract import AUDIO_FEATS, AUDIO_LENGTHS, FACE_LENGTHS, FACES, GRAPH_INPUTS, PROBS, profile_ranges
from avemo.errors import AvemoError
from avemo.export.wrappers import wrap
from avemo.runtime.backends.parity import sample_inputs
from avemo.train.model import CrossModalTransformer

# Without torchvision, torch.onnx warns per graph that it skips torchvision's detection ops; avemo uses none.
logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(
    lambda record: "torchvision is not installed" not in record.getMessage()
)


def export_graph(model: CrossModalTransformer, modality: str, opset: int, simplify: bool = True) -> onnx.ModelProto:
    """Export one graph with batch and time dynamic; optionally simplify with onnxsim (checks on)."""
    cfg = model.cfg
    ranges = profile_ranges(cfg.features.frames_per_second, cfg.features.fps)
    batch = torch.export.Dim("batch", min=1, max=max(64, ranges["batch"][2]))
    audio_t = torch.export.Dim("audio_frames", min=1, max=4 * ranges["audio_frames"][2])
    face_t = torch.export.Dim("face_frames", min=1, max=4 * ranges["face_frames"][2])
    dims = {
        AUDIO_FEATS: {0: batch, 1: audio_t},
        AUDIO_LENGTHS: {0: batch},
        FACES: {0: batch, 1: face_t},
        FACE_LENGTHS: {0: batch},
    }
    # Example with batch 2 and several frames: size-1 axes would be specialised to constants.
    example = sample_inputs(cfg.features, modality, batch=2, seconds=2.0, seed=0)
    names = GRAPH_INPUTS[modality]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrap(model, modality),
            tuple(torch.from_numpy(example[n]) for n in names),
            input_names=list(names),
            output_names=[PROBS],
            dynamic_shapes={n: dims[n] for n in names},
            opset_version=opset,
            dynamo=True,
        )
    proto = program.model_proto
    if simplify:
        from onnxsim import simplify as onnxsim_simplify

        proto, ok = onnxsim_simplify(proto)
        if not ok:
            raise AvemoError(f"onnxsim could not validate the simplified {modality} graph; retry with --no-simplify")
    return faces_through_cast(proto)


def faces_through_cast(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Let the uint8 faces feed their Cast alone: TensorRT converts a uint8 network input to float and reads
    nothing else of it (its Shape layer takes no uint8), so shape reads move to the Cast's output (same shape)."""
    casts = [n for n in proto.graph.node if n.op_type == "Cast" and FACES in n.input]
    if not casts:
        return proto
    cast = onnx.NodeProto()
    cast.CopyFrom(casts[0])
    proto.graph.node.remove(casts[0])
    for node in proto.graph.node:
        node.input[:] = [cast.output[0] if name == FACES else name for name in node.input]
    proto.graph.node.insert(0, cast)  # first: the nodes that read the shape come before it
    return proto
