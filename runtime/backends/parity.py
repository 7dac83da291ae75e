"""Parity of exported graphs: each graph against reference probabilities, loud on failure.

Torch-free on purpose: `avemo verify` re-runs it where only the runtime is
installed. The sample inputs are regenerated from their seeds (NumPy), so
parity.npz holds only the reference probabilities.

The samples cover the engine profile's corners, not only its easy middle: the
longest clip (30 s), the largest batch with ragged lengths, a single face
frame, and audio lengths that an fp16 graph rounds wrong if it does length
arithmetic in floats. A graph that carries fp16 runs in ONNX's reference
evaluator, which honours every fp16 rounding as a strongly typed TensorRT
engine does (`runtime/backends/numerics.py`); fp32 graphs run in ONNX Runtime.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from avemo.config import FeatureConfig
from avemo.contract import (
    AUDIO_FEATS,
    AUDIO_LENGTHS,
    FACE_LENGTHS,
    FACES,
    FACES_DTYPE,
    INVARIANCE_TOLERANCE,
    PARITY_TOLERANCE,
    PROFILE_BATCH,
    PROFILE_SECONDS,
    graph_file,
)
from avemo.errors import AvemoError
from avemo.runtime.backends import open_onnx
from avemo.runtime.backends.numerics import check_graph_numerics

#: (batch, seconds) of the random ragged samples: batch 1, a short clip, a long batch, the largest batch.
PARITY_SHAPES: tuple[tuple[int, float], ...] = ((1, 0.6), (3, 2.0), (2, 8.0), (PROFILE_BATCH[2], 1.0))

#: Audio lengths (frames) whose pooled length (L + 1) / 2 = k + 0.5 with k >= 1024 rounds half-to-even in
#: fp16: a graph that computed lengths in floats would admit one padded position (DESIGN.md, "Numerics").
FP16_ROUNDING_FRAMES: tuple[int, ...] = (2050, 2502)

Samples = dict[str, list[dict[str, np.ndarray]]]  # modality -> list of input dicts
References = dict[str, list[np.ndarray]]  # modality -> list of probs


class ParityError(AvemoError):
    """An exported graph disagrees with its reference beyond the tolerance."""


def check_parity(
    graph_dir: Path, samples: Samples, references: References, precision: str, threads: int | None = None
) -> dict[str, Any]:
    """Check ``graph_dir``'s graphs: no integer arithmetic in fp16, every sample within ``TOLERANCE`` of its
    reference, and the corner sample's clips the same alone as padded into the batch; raise ParityError (with
    the numbers) otherwise."""
    tol, inv_tol = PARITY_TOLERANCE[precision], INVARIANCE_TOLERANCE[precision]
    report: dict[str, Any] = {}
    failures = []
    for modality, inputs in samples.items():
        path = Path(graph_dir) / graph_file(modality)
        check_graph_numerics(path)
        if len(inputs) != len(references[modality]):
            raise ParityError(
                f"{graph_dir}: {len(references[modality])} reference results for {len(inputs)} parity samples "
                "(parity.npz from another avemo version); export the model again"
            )
        started = time.perf_counter()
        runner = open_onnx(path, "checker", threads, workload="inference")
        diffs, agree, total = [], 0, 0
        for sample, ref in zip(inputs, references[modality], strict=True):
            got = runner.infer(sample)
            diffs.append(max_abs_diff(got, ref))
            agree += int(((got >= 0.5) == (ref >= 0.5)).sum())
            total += ref.size
        moved = padding_invariance(runner, inputs[-1], got)  # the corner sample is the last
        shapes = [tuple(next(iter(s.values())).shape[:2]) for s in inputs]
        report[modality] = {
            "max_abs_diff": max(diffs),
            "per_shape": diffs,
            "shapes": shapes,
            "label_agreement": agree / total,
            "padding_invariance": moved,
            "runner": runner.kind,
            "seconds": round(time.perf_counter() - started, 2),
        }
        if max(diffs) > tol:
            failures.append(
                f"{graph_file(modality)}: max |probs diff| {max(diffs):.2e} > {tol:.0e} at (batch, time) {shapes}"
            )
        if moved > inv_tol:
            failures.append(
                f"{graph_file(modality)}: a clip's probs move by {moved:.2e} (> {inv_tol:.0e}) when padded into a "
                f"batch (corner sample, lengths {_lengths(inputs[-1])})"
            )
    if failures:
        raise ParityError(f"{graph_dir} ({precision}) failed parity: " + "; ".join(failures))
    return report


def parity_summary(report: dict[str, Any]) -> str:
    """One line for a precision's ``check_parity`` report."""
    worst = max(r["max_abs_diff"] for r in report.values())
    moved = max(r["padding_invariance"] for r in report.values())
    agree = min(r["label_agreement"] for r in report.values())
    runners = "/".join(sorted({r["runner"] for r in report.values()}))
    seconds = sum(r["seconds"] for r in report.values())
    return (
        f"parity max |diff| {worst:.2e}, padded vs alone {moved:.1e}, thresholded-label agreement "
        f"{100 * agree:.1f}% ({runners}, {seconds:.1f} s)"
    )


def padding_invariance(runner: Any, batch: dict[str, np.ndarray], batched: np.ndarray) -> float:
    """Largest |probs| change of the corner sample's clips but the first (the fp16-rounding lengths, the single
    face frame) run alone, cut to their own lengths, against their rows in the padded batch."""
    moved = 0.0
    for row in range(1, len(batched)):
        alone = {name: value[row : row + 1] for name, value in batch.items()}
        for data, lengths in ((AUDIO_FEATS, AUDIO_LENGTHS), (FACES, FACE_LENGTHS)):
            if data in alone:
                alone[data] = alone[data][:, : int(batch[lengths][row])]
        moved = max(moved, max_abs_diff(runner.infer(alone), batched[row : row + 1]))
    return moved


def max_abs_diff(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref|, infinite where either is not finite (a NaN must fail a check, not pass it)."""
    diff = np.abs(got.astype(np.float64) - ref)
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def _lengths(sample: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {v.tolist()}" for k, v in sample.items() if k in (AUDIO_LENGTHS, FACE_LENGTHS))


def case_inputs(
    features: FeatureConfig,
    modality: str,
    audio_lengths: list[int],
    face_lengths: list[int],
    seed: int,
    faces_dtype: str = FACES_DTYPE,
) -> dict[str, np.ndarray]:
    """Seeded random inputs with the given lengths per clip, padded to the longest. Faces: uniform pixels,
    or with ``faces_dtype`` float32 the [0, 1) floats they are made from (an old export's parity samples)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    if "a" in modality:
        shape = (len(audio_lengths), max(audio_lengths), features.audio_dim)
        out[AUDIO_FEATS] = rng.normal(0, 3, shape).astype(np.float32)
        out[AUDIO_LENGTHS] = np.array(audio_lengths, np.int64)
    if "v" in modality:
        size = features.face_size
        unit = rng.random((len(face_lengths), max(face_lengths), 3, size, size), dtype=np.float32)
        out[FACES] = unit if faces_dtype != FACES_DTYPE else (unit * 256).astype(np.uint8)
        out[FACE_LENGTHS] = np.array(face_lengths, np.int64)
    return out


def sample_inputs(
    features: FeatureConfig, modality: str, batch: int, seconds: float, seed: int, faces_dtype: str = FACES_DTYPE
) -> dict[str, np.ndarray]:
    """Seeded random inputs with ragged lengths (the longest clip fills the padded size)."""
    rng = np.random.default_rng(seed)
    ta, tv = max(8, round(seconds * features.frames_per_second)), max(1, round(seconds * features.fps))
    audio = [ta, *rng.integers(max(1, ta // 3), ta + 1, batch - 1).tolist()]
    faces = [tv, *rng.integers(1, tv + 1, batch - 1).tolist()]
    return case_inputs(features, modality, audio, faces, seed, faces_dtype)


def corner_inputs(
    features: FeatureConfig, modality: str, seed: int, faces_dtype: str = FACES_DTYPE
) -> dict[str, np.ndarray]:
    """The profile's far corner: the longest clip (30 s) padded beside clips of fp16-rounding audio lengths,
    one of them with a single face frame."""
    longest = round(PROFILE_SECONDS[2] * features.frames_per_second)
    audio = [longest, *(min(f, longest) for f in FP16_ROUNDING_FRAMES)]
    frames = round(PROFILE_SECONDS[2] * features.fps)
    return case_inputs(features, modality, audio, [frames, 1, max(1, frames * 2 // 3)], seed, faces_dtype)


def parity_samples(
    features: FeatureConfig, modalities: list[str] | tuple[str, ...], faces_dtype: str = FACES_DTYPE
) -> Samples:
    """The fixed sample set of every export and `avemo verify`: the ragged shapes, then the corner.
    ``faces_dtype``: the model's (``Manifest.faces_dtype``): an old export's references were made from float
    faces, drawn from the same seeds."""
    return {
        m: [
            *(sample_inputs(features, m, b, s, 100 + i, faces_dtype) for i, (b, s) in enumerate(PARITY_SHAPES)),
            corner_inputs(features, m, 100 + len(PARITY_SHAPES), faces_dtype),
        ]
        for m in modalities
    }


def save_references(path: Path, references: References) -> None:
    np.savez(path, **{f"{m}/{i}": probs for m, refs in references.items() for i, probs in enumerate(refs)})


def load_references(path: Path) -> References:
    references: References = {}
    with np.load(path) as data:
        for key in sorted(data.files, key=lambda k: (k.split("/")[0], int(k.split("/")[1]))):
            references.setdefault(key.split("/")[0], []).append(data[key])
    return references
