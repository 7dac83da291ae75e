"""A small gRPC client for avemo's Triton models (tests, `scripts/bench_triton.py`, users with avemo).

A client without avemo needs only `tritonclient[grpc]` and numpy: see
docs/SERVING.md for the same calls written out.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from avemo.contract import AUDIO_LENGTHS, FACE_LENGTHS, LABELS, PROBS
from avemo.deps import require
from avemo.runtime.serving.repository import MEDIA_MODEL, model_name
from avemo.runtime.serving.triton_model import MEDIA_INPUT, MEDIA_OUTPUTS

TRITON_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.uint8): "UINT8"}


class AvemoTritonClient:
    """``graph(modality, inputs) -> probs [B, 6]`` and ``media(bytes) -> dict`` over gRPC."""

    def __init__(self, url: str, timeout: float | None = 60.0) -> None:
        grpc = require("tritonclient.grpc", "pip install 'tritonclient[grpc]'")
        self._grpc = grpc
        self.client = grpc.InferenceServerClient(url)
        self.timeout = timeout

    def _input(self, name: str, array: np.ndarray) -> Any:
        tensor = self._grpc.InferInput(name, list(array.shape), TRITON_TYPES[array.dtype])
        tensor.set_data_from_numpy(array)
        return tensor

    def graph(self, modality: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """One request to avemo_a / avemo_v / avemo_av; lengths as [B] (sent as [B, 1])."""
        tensors = [
            self._input(name, x.reshape(-1, 1) if name in (AUDIO_LENGTHS, FACE_LENGTHS) else x)
            for name, x in inputs.items()
        ]
        return self.client.infer(model_name(modality), tensors, client_timeout=self.timeout).as_numpy(PROBS)

    def media(self, data: bytes) -> dict[str, Any]:
        """One encoded clip to avemo_media: {probs: {emotion: p}, modality, notes, result}."""
        response = self.client.infer(
            MEDIA_MODEL, [self._input(MEDIA_INPUT, np.frombuffer(data, np.uint8))], client_timeout=self.timeout
        )
        probs = response.as_numpy(MEDIA_OUTPUTS[0])
        text = {name: response.as_numpy(name).tobytes().decode() for name in MEDIA_OUTPUTS[1:]}
        return {
            "probs": dict(zip(LABELS, probs.tolist(), strict=True)),
            "modality": text["modality"],
            "notes": json.loads(text["notes"]),
            "result": json.loads(text["result"]),
        }

    def close(self) -> None:
        self.client.close()
