"""Calibration and evaluation data from the feature cache, as NumPy inputs of the exported graphs.

Torch-free: the same padded batches feed ONNX Runtime for calibration and for
the accuracy report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from avemo.contract import AUDIO_FEATS, AUDIO_LENGTHS, FACE_LENGTHS, FACES, FACES_DTYPE, LABELS
from avemo.errors import AvemoError
from avemo.train.cache import CacheSplit

#: Clip-length strata the calibration sample is spread over (quantiles of audio length).
LENGTH_BINS = 4


def usable(split: CacheSplit, modality: str) -> np.ndarray:
    """Indices of the clips that have every stream ``modality`` needs."""
    keep = [
        i
        for i in range(len(split))
        if ("a" not in modality or split.audio_length(i) > 0) and ("v" not in modality or split.face_count(i) > 0)
    ]
    return np.asarray(keep, np.int64)


def streams(modalities: list[str]) -> str:
    """'av' when the model reads both streams, else 'a' or 'v': the clips calibration can use."""
    return "".join(s for s in "av" if any(s in m for m in modalities))


def clips_from_file(path: Path, split: CacheSplit) -> list[int]:
    """Clip ids from an earlier calibration.json (or a JSON list): the same sample, bit for bit."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AvemoError(f"{path}: unreadable clip list ({exc})") from None
    ids = raw.get("clips") if isinstance(raw, dict) else raw
    if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
        raise AvemoError(f"{path}: not a clip list (a JSON list of clip ids, or a calibration.json)")
    where = {clip_id: i for i, clip_id in enumerate(split.ids)}
    missing = [c for c in ids if c not in where]
    if missing:
        raise AvemoError(f"{path}: {len(missing)} clips are not in {split.root}/{split.split} (first: {missing[0]})")
    return sorted(where[c] for c in ids)


def select_clips(
    split: CacheSplit, samples: int, seed: int, min_per_label: int | None = None, need: str = "av"
) -> list[int]:
    """A seeded sample of clips with the streams ``need``s that covers every clip-length stratum and all six labels.

    Each label first gets ``min_per_label`` positive clips (default: an even
    share of half the sample), then the rest is drawn round-robin from length
    quartiles. Raises before any work when the split cannot supply that.
    """
    pool = usable(split, need)
    if samples < 1:
        raise AvemoError("--samples must be at least 1")
    if len(pool) < samples:
        have = {"av": "audio and a face", "a": "audio", "v": "a face"}[need]
        raise AvemoError(f"{split.root}/{split.split}: {len(pool)} clips have {have}, fewer than --samples {samples}")
    per_label = max(1, samples // (2 * len(LABELS))) if min_per_label is None else min_per_label
    labels = split.labels[pool] > 0.5
    short = [f"{name} ({int(labels[:, k].sum())})" for k, name in enumerate(LABELS) if labels[:, k].sum() < per_label]
    if short:
        raise AvemoError(
            f"{split.root}/{split.split}: too few positive clips for {', '.join(short)}; "
            f"calibration needs {per_label} per label (raise --samples' pool or lower --samples)"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    chosen: list[int] = []
    taken = np.zeros(len(pool), bool)
    for k in range(len(LABELS)):
        have = int(labels[np.flatnonzero(taken), k].sum())
        for j in order:
            if have >= per_label or len(chosen) == samples:
                break
            if labels[j, k] and not taken[j]:
                taken[j] = True
                chosen.append(j)
                have += 1
    lengths = np.array([split.audio_length(int(i)) + split.face_count(int(i)) for i in pool])
    edges = np.quantile(lengths, np.linspace(0, 1, LENGTH_BINS + 1)[1:-1])
    strata = np.digitize(lengths, edges)
    queues = [[j for j in order if strata[j] == s and not taken[j]] for s in range(LENGTH_BINS)]
    while len(chosen) < samples:
        for queue in queues:
            if queue and len(chosen) < samples:
                chosen.append(queue.pop(0))
    return sorted(int(pool[j]) for j in chosen)


def clip_inputs(split: CacheSplit, indices: list[int] | np.ndarray, modality: str) -> dict[str, np.ndarray]:
    """Zero-padded graph inputs for the clips ``indices`` (one batch)."""
    out: dict[str, np.ndarray] = {}
    if "a" in modality:
        audio = [split.audio(int(i)) for i in indices]
        feats = np.zeros((len(audio), max(len(a) for a in audio), split.features.audio_dim), np.float32)
        for j, a in enumerate(audio):
            feats[j, : len(a)] = a
        out[AUDIO_FEATS] = feats
        out[AUDIO_LENGTHS] = np.array([len(a) for a in audio], np.int64)
    if "v" in modality:
        crops = [split.faces(int(i)) for i in indices]
        s = split.features.face_size
        faces = np.zeros((len(crops), max(len(c) for c in crops), 3, s, s), FACES_DTYPE)
        for j, c in enumerate(crops):
            faces[j, : len(c)] = c.transpose(0, 3, 1, 2)  # pixels as they are: the graphs scale them
        out[FACES] = faces
        out[FACE_LENGTHS] = np.array([len(c) for c in crops], np.int64)
    return out


def batches(
    split: CacheSplit, indices: np.ndarray, modality: str, batch_size: int
) -> Iterator[tuple[np.ndarray, dict]]:
    """(indices, inputs) batches of similar length: little padding, deterministic order."""
    lengths = np.array([split.audio_length(int(i)) + split.face_count(int(i)) for i in indices])
    ordered = np.asarray(indices)[np.argsort(lengths, kind="stable")]
    for b in range(math.ceil(len(ordered) / batch_size)):
        chunk = ordered[b * batch_size : (b + 1) * batch_size]
        yield chunk, clip_inputs(split, chunk, modality)


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol over cached clips, one clip per step at its own length."""

    def __init__(self, split: CacheSplit, indices: list[int], modality: str) -> None:
        self.split = split
        self.indices = list(indices)
        self.modality = modality
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position == len(self.indices):
            return None
        self._position += 1
        return clip_inputs(self.split, [self.indices[self._position - 1]], self.modality)

    def get_first(self) -> dict[str, np.ndarray]:
        """The first clip without advancing (ModelOpt probes the graph with it)."""
        return clip_inputs(self.split, self.indices[:1], self.modality)

    def rewind(self) -> None:
        self._position = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        return iter(self.get_next, None)

    def __len__(self) -> int:
        return len(self.indices)


class DecisionInputs:
    """The decision split's batches for the search's many judgements: decoded once while they fit in memory."""

    LIMIT = 1 << 30  # bytes; above it (a MOSEI-sized split) batches are decoded again for every judgement

    def __init__(self, split: CacheSplit, modality: str, batch_size: int = 16) -> None:
        self.split, self.modality, self.batch_size = split, modality, batch_size
        self.order: list[int] = []  # clip indices in batch order, known after the first pass
        self._kept: list[dict[str, np.ndarray]] | None = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[dict[str, np.ndarray]] | None = []
        self.order = []
        for chunk, batch in batches(self.split, usable(self.split, self.modality), self.modality, self.batch_size):
            self.order.extend(int(i) for i in chunk)
            if kept is not None:
                kept.append(batch)
                if sum(a.nbytes for b in kept for a in b.values()) > self.LIMIT:
                    kept = None
            yield batch
        self._kept = kept
