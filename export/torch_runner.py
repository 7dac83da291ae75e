"""PyTorch eager inference from a checkpoint, with the runtime backends' interface: the profiling baseline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from avemo.contract import GRAPH_INPUTS
from avemo.export.wrappers import wrap
from avemo.runtime.backends.base import BackendBase
from avemo.train.checkpoint import load_model


class TorchRunner(BackendBase):
    """``infer({input name: array}) -> probs``: the exported wrapper of ``modality``, eager, fp32."""

    kind = "torch"

    def __init__(self, checkpoint: Path, modality: str, threads: int | None = None) -> None:
        torch.set_num_threads(threads or os.cpu_count() or 1)
        model, _ = load_model(Path(checkpoint))
        self.graph = wrap(model, modality)
        self.path, self.names = Path(checkpoint), GRAPH_INPUTS[modality]

    def infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return self.graph(*(torch.from_numpy(inputs[name]) for name in self.names)).numpy()
