"""Parity of exported graphs: ONNX Runtime against reference probabilities, loud on failure.

Torch-free on purpose: `avemo verify` re-runs it where only the runtime is
installed. The sample inputs are regenerated from their seeds (NumPy), so
parity.npz holds only the reference probabilities and the sample list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from avemo.config import FeatureConfig
from avemo.contract import AUDIO_FEATS, AUDIO_LENGTHS, FACE_LENGTHS, FACES, graph_file
from avemo.errors import AvemoError
from avemo.runtime.ort_backend import OrtBackend

#: Maximum |probs - reference| accepted per precision (fp32 fails the export beyond it).
#: INT8 on these random inputs is a sanity bound only (they lie outside the calibrated ranges);
#: its accuracy is judged on real features by `avemo calibrate`'s report.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.5, "int8-cpu": 0.5}

#: (batch, seconds) pairs every graph is checked at: batch 1, a short clip, a long batch.
PARITY_SHAPES: tuple[tuple[int, float], ...] = ((1, 0.6), (3, 2.0), (2, 8.0))

Samples = dict[str, list[dict[str, np.ndarray]]]  # modality -> list of input dicts
References = dict[str, list[np.ndarray]]  # modality -> list of probs


class ParityError(AvemoError):
    """An exported graph disagrees with its reference beyond the tolerance."""


def check_parity(
    graph_dir: Path, samples: Samples, references: References, precision: str, threads: int | None = None
) -> dict[str, Any]:
    """Run every sample through ``graph_dir``'s graphs; raise ParityError (with the numbers) beyond tolerance."""
    tol = TOLERANCE[precision]
    report: dict[str, Any] = {}
    failures = []
    for modality, inputs in samples.items():
        backend = OrtBackend(Path(graph_dir) / graph_file(modality), threads=threads)
        diffs, agree, total = [], 0, 0
        for sample, ref in zip(inputs, references[modality], strict=True):
            got = backend.infer(sample)
            diffs.append(float(np.abs(got - ref).max()))
            agree += int(((got >= 0.5) == (ref >= 0.5)).sum())
            total += ref.size
        shapes = [tuple(next(iter(s.values())).shape[:2]) for s in inputs]
        report[modality] = {
            "max_abs_diff": max(diffs),
            "per_shape": diffs,
            "shapes": shapes,
            "label_agreement": agree / total,
        }
        if max(diffs) > tol:
            failures.append(
                f"{graph_file(modality)}: max |probs diff| {max(diffs):.2e} > {tol:.0e} at (batch, time) {shapes}"
            )
    if failures:
        raise ParityError(f"{graph_dir} ({precision}) failed parity: " + "; ".join(failures))
    return report


def sample_inputs(
    features: FeatureConfig, modality: str, batch: int, seconds: float, seed: int
) -> dict[str, np.ndarray]:
    """Seeded random inputs with ragged lengths (the longest clip fills the padded size)."""
    rng = np.random.default_rng(seed)
    ta, tv = max(8, round(seconds * features.frames_per_second)), max(1, round(seconds * features.fps))
    out: dict[str, np.ndarray] = {}
    if "a" in modality:
        out[AUDIO_FEATS] = rng.normal(0, 3, (batch, ta, features.audio_dim)).astype(np.float32)
        out[AUDIO_LENGTHS] = np.array([ta, *rng.integers(max(1, ta // 3), ta + 1, batch - 1)], np.int64)
    if "v" in modality:
        out[FACES] = rng.random((batch, tv, 3, features.face_size, features.face_size), dtype=np.float32)
        out[FACE_LENGTHS] = np.array([tv, *rng.integers(1, tv + 1, batch - 1)], np.int64)
    return out


def parity_samples(features: FeatureConfig, modalities: list[str] | tuple[str, ...]) -> Samples:
    """The fixed sample set of every export and `avemo verify`."""
    return {
        m: [
            sample_inputs(features, m, batch, seconds, seed=100 + i) for i, (batch, seconds) in enumerate(PARITY_SHAPES)
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
