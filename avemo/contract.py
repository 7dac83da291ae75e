"""The I/O contract: every name that training, export and the runtime share.

One place for each fact: label order, tensor names, file names. Nothing here
imports torch.
"""

from __future__ import annotations

from typing import Final

#: Emotion labels, in the order of the model's output columns (CMU-MOSEI order).
LABELS: Final[tuple[str, ...]] = ("happy", "sad", "anger", "surprise", "disgust", "fear")
NUM_LABELS: Final[int] = len(LABELS)

#: Inference modalities: audio only, visual only, both.
MODALITIES: Final[tuple[str, ...]] = ("a", "v", "av")
MODALITY_TITLES: Final[dict[str, str]] = {"a": "A", "v": "V", "av": "A+V"}

# Graph inputs and output.
AUDIO_FEATS: Final[str] = "audio_feats"  # float32 [B, Ta, 240]
AUDIO_LENGTHS: Final[str] = "audio_lengths"  # int64 [B]
FACES: Final[str] = "faces"  # float32 [B, Tv, 3, S, S] in [0, 1]
FACE_LENGTHS: Final[str] = "face_lengths"  # int64 [B]
PROBS: Final[str] = "probs"  # float32 [B, 6]

GRAPH_INPUTS: Final[dict[str, tuple[str, ...]]] = {
    "a": (AUDIO_FEATS, AUDIO_LENGTHS),
    "v": (FACES, FACE_LENGTHS),
    "av": (AUDIO_FEATS, AUDIO_LENGTHS, FACES, FACE_LENGTHS),
}

# File names.
WEIGHTS_FILE: Final[str] = "avemo.weights"
MANIFEST_FILE: Final[str] = "manifest.json"
BEST_CHECKPOINT: Final[str] = "best.pt"
LAST_CHECKPOINT: Final[str] = "last.pt"
HISTORY_FILE: Final[str] = "history.json"
CURVES_FILE: Final[str] = "curves.png"
CACHE_META_FILE: Final[str] = "cache.json"


def graph_file(modality: str) -> str:
    """ONNX file name of the graph for ``modality`` ('a', 'v' or 'av')."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return f"avemo_{modality}.onnx"
