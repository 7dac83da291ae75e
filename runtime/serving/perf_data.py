"""Input data for NVIDIA's perf_analyzer against avemo's Triton models (its defaults cannot drive them:
dynamic shapes, lengths that must match the frames sent, media that must be a real clip).

    python -m avemo.runtime.serving.perf_data MODELS CLIP [CLIP ...] --out perf/
    perf_analyzer -m avemo_av -i grpc -u 127.0.0.1:8001 --input-data perf/avemo_av.json --concurrency-range 1:4

Writes one JSON file per model (avemo_a, avemo_v, avemo_av from the features of each clip, avemo_media
from its bytes) in perf_analyzer's "real input data" format: per request, every input as
``{"content": {"b64": little-endian row-major bytes}, "shape": [...]}`` without the batch axis.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import AUDIO_FEATS, AUDIO_LENGTHS, FACE_LENGTHS, FACES, GRAPH_INPUTS, MODALITIES
from avemo.runtime.backends.base import faces_for
from avemo.runtime.serving.repository import MEDIA_MODEL, model_name
from avemo.runtime.serving.triton_model import MEDIA_INPUT


def tensor(array: np.ndarray) -> dict[str, Any]:
    """One input of one request as perf_analyzer reads it."""
    array = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
    return {"content": {"b64": base64.b64encode(array.tobytes()).decode()}, "shape": list(array.shape)}


def requests(models: Path, clips: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """{model name: [one request's inputs per clip]}; a graph gets only the clips it can take (faces for v)."""
    from avemo.runtime.recognizer import Recognizer

    data: dict[str, list[dict[str, Any]]] = {model_name(m): [] for m in MODALITIES}
    data[MEDIA_MODEL] = [{MEDIA_INPUT: tensor(np.frombuffer(clip.read_bytes(), np.uint8))} for clip in clips]
    with Recognizer(models) as recognizer:
        for clip in clips:
            inputs, _ = recognizer.prepare(clip)
            arrays = {
                AUDIO_FEATS: inputs.audio,
                AUDIO_LENGTHS: np.array([len(inputs.audio)], np.int64),
                FACES: faces_for(inputs.faces, recognizer.manifest.faces_dtype),  # an old export's: float
                FACE_LENGTHS: np.array([len(inputs.faces)], np.int64),
            }
            for modality in recognizer.manifest.modalities:
                names = GRAPH_INPUTS[modality]
                if all(len(arrays[n]) for n in names):  # a clip without faces has nothing for avemo_v
                    data[model_name(modality)].append({n: tensor(arrays[n]) for n in names})
    return {name: entries for name, entries in data.items() if entries}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, help="The exported model folder (what the repository serves).")
    parser.add_argument(
        "clips", type=Path, nargs="+", help="Media files of up to 30 s (the graphs' profile); one request each."
    )
    parser.add_argument("--out", type=Path, required=True, help="Folder for <model>.json.")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, entries in requests(args.models, args.clips).items():
        path = args.out / f"{name}.json"
        path.write_text(json.dumps({"data": entries}) + "\n")
        print(f"{path}: {len(entries)} request(s)")


if __name__ == "__main__":
    main()
