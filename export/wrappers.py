"""One export wrapper per graph: the graph's exact inputs and output, nothing threaded through the model.

Each wrapper holds the same model instance, so parameter names (and so ONNX
initializer names) are identical across the three graphs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avemo.contract import FACES_SCALE, GRAPH_INPUTS
from avemo.train.model import CrossModalTransformer


def pixels(faces: Tensor) -> Tensor:
    """uint8 faces -> float in [0, 1]: the graph's first nodes (Cast, Div), so the host moves bytes, not floats.
    Div, not Mul by 1/255: it is what training's ``div_(255)`` computes, and fp16 export keeps Div in fp32."""
    return faces.float() / FACES_SCALE


class AudioGraph(nn.Module):
    """avemo_a.onnx: (audio_feats [B, Ta, 240], audio_lengths [B]) -> probs [B, 6]."""

    def __init__(self, model: CrossModalTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio_feats: Tensor, audio_lengths: Tensor) -> Tensor:
        return torch.sigmoid(self.model(audio=audio_feats, audio_lengths=audio_lengths))


class VisualGraph(nn.Module):
    """avemo_v.onnx: (faces [B, Tv, 3, S, S] uint8, face_lengths [B]) -> probs [B, 6]."""

    def __init__(self, model: CrossModalTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, faces: Tensor, face_lengths: Tensor) -> Tensor:
        return torch.sigmoid(self.model(faces=pixels(faces), face_lengths=face_lengths))


class AudioVisualGraph(nn.Module):
    """avemo_av.onnx: both inputs -> probs [B, 6]."""

    def __init__(self, model: CrossModalTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio_feats: Tensor, audio_lengths: Tensor, faces: Tensor, face_lengths: Tensor) -> Tensor:
        return torch.sigmoid(self.model(audio_feats, audio_lengths, pixels(faces), face_lengths))


WRAPPERS: dict[str, type[nn.Module]] = {"a": AudioGraph, "v": VisualGraph, "av": AudioVisualGraph}


def wrap(model: CrossModalTransformer, modality: str) -> nn.Module:
    """The eval-mode wrapper of ``modality``; checks the wrapper's inputs against the contract."""
    wrapper = WRAPPERS[modality](model).eval()
    names = tuple(wrapper.forward.__code__.co_varnames[1 : 1 + len(GRAPH_INPUTS[modality])])
    assert names == GRAPH_INPUTS[modality], (names, GRAPH_INPUTS[modality])
    return wrapper
