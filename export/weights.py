"""One external-data file for several graphs: each distinct tensor stored once (content hash, aligned)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ALIGN = 64  # bytes: lets a loader memory-map tensors at aligned addresses
MIN_EXTERNAL_BYTES = 1024  # tiny tensors (shapes, scalars) stay inside the graph


def share_weights(graphs: dict[str, onnx.ModelProto], weights_path: Path) -> dict[str, int]:
    """Move every large initializer of ``graphs`` into ``weights_path``, deduplicated by content.

    The protos are changed in place to point at the file (location relative to
    the graphs' folder). Returns sizes: bytes written and bytes referenced.
    """
    offsets: dict[str, tuple[int, int]] = {}
    written = referenced = 0
    with open(weights_path, "wb") as fh:
        for proto in graphs.values():
            for tensor in proto.graph.initializer:
                array = numpy_helper.to_array(tensor)
                data = np.ascontiguousarray(array).tobytes()
                if len(data) < MIN_EXTERNAL_BYTES:
                    continue
                key = hashlib.sha256(f"{tensor.data_type}:{array.shape}".encode() + data).hexdigest()
                if key not in offsets:
                    pad = (-fh.tell()) % ALIGN
                    fh.write(b"\0" * pad)
                    offsets[key] = (fh.tell(), len(data))
                    fh.write(data)
                    written += len(data)
                referenced += len(data)
                offset, length = offsets[key]
                _point_at(tensor, weights_path.name, offset, length)
    return {"bytes_written": written, "bytes_referenced": referenced, "tensors": len(offsets)}


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
