"""A seeded synthetic stand-in for CMU-MOSEI at the feature level (`avemo synth`).

Each clip has six binary labels drawn with MOSEI's Table-1 training
frequencies. A present emotion leaves a cue in the audio (a raised band of
log-Mel bins over part of the clip) and/or in the face crops (a drawn facial
feature), each with a probability set by the benchmark (`SYNTH_BENCHMARKS`):

- ``mixed`` (the default, and the demo's): some emotions are mostly heard,
  others mostly seen, and every one is recognised best from both.
- ``audio-led``: every emotion is cued in the voice with probability 0.9 and
  in the face with 0.5. Audio alone nearly explains the labels, so a model
  trained only on A+V can lean on it and neglect the face, while the face
  still carries real information (as in MOSEI, where the paper's conventional
  model lost accuracy on single-modality input).

Absent emotions leave spurious cues now and then, so no modality is perfect.

Written with the same CacheWriter as `avemo prepare`, read by the same dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avemo.config import FeatureConfig
from avemo.contract import LABELS, NUM_LABELS
from avemo.errors import AvemoError
from avemo.train.cache import SPLITS, CacheWriter, Clip, encode_jpeg

#: CMU-MOSEI: clips per split and positives per emotion in training (paper Table 1).
MOSEI_SPLIT_SIZES = {"train": 16327, "valid": 1871, "test": 4662}
MOSEI_TRAIN_POSITIVES = {"happy": 8735, "sad": 4269, "anger": 3526, "surprise": 1642, "disgust": 2955, "fear": 1331}

#: Per benchmark: probability that a present emotion is cued in audio / in the face (label order).
SYNTH_BENCHMARKS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mixed": ((0.55, 0.85, 0.85, 0.45, 0.35, 0.85), (0.85, 0.45, 0.45, 0.85, 0.85, 0.40)),
    "audio-led": ((0.9,) * NUM_LABELS, (0.5,) * NUM_LABELS),
}
SPURIOUS_CUE = 0.06  # an absent emotion still leaves a cue in a modality


@dataclass(frozen=True)
class SynthSpec:
    clips: int
    min_seconds: float
    max_seconds: float
    benchmark: str = "mixed"  # a key of SYNTH_BENCHMARKS


SYNTH_PRESETS = {
    "tiny": SynthSpec(clips=800, min_seconds=1.2, max_seconds=3.0),
    "paper": SynthSpec(clips=3000, min_seconds=3.0, max_seconds=12.0),
}


def label_prevalence() -> np.ndarray:
    return np.array([MOSEI_TRAIN_POSITIVES[k] / MOSEI_SPLIT_SIZES["train"] for k in LABELS])


def split_sizes(total: int) -> dict[str, int]:
    """MOSEI's train/valid/test proportions for ``total`` clips."""
    n = sum(MOSEI_SPLIT_SIZES.values())
    valid = max(1, round(total * MOSEI_SPLIT_SIZES["valid"] / n))
    test = max(1, round(total * MOSEI_SPLIT_SIZES["test"] / n))
    return {"train": total - valid - test, "valid": valid, "test": test}


def _synth_fbank(rng: np.random.Generator, frames: int, cues: np.ndarray, bins: int) -> np.ndarray:
    """Speech-like log-Mel frames: a speaker's spectral tilt, a syllable envelope, noise, cue bands."""
    tilt = np.linspace(rng.uniform(2, 6), rng.uniform(-2, 2), bins)
    t = np.arange(frames) / 100.0
    envelope = 3.0 * np.maximum(0.0, np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)))
    feats = tilt[None, :] + envelope[:, None] + rng.normal(0, 1.0, (frames, bins))
    band = bins // (NUM_LABELS + 2)
    for k in np.flatnonzero(cues):
        start = rng.integers(0, max(1, frames // 2))
        stop = min(frames, start + max(10, int(frames * rng.uniform(0.3, 0.6))))
        lo = band * (k + 1)
        feats[start:stop, lo : lo + band] += rng.uniform(1.5, 3.0) * envelope[start:stop, None] / 3.0 + 1.0
    return feats.astype(np.float32)


def _draw_face(rng: np.random.Generator, size: int, cues: np.ndarray, cv2) -> np.ndarray:  # noqa: ANN001
    """A drawn face at 4x resolution (for smooth shapes), then resized to ``size``."""
    s = 4 * size
    img = np.full((s, s, 3), rng.integers(40, 200, 3), np.uint8)
    cx, cy = (s // 2 + int(rng.integers(-s // 16, s // 16 + 1)) for _ in range(2))
    rx, ry = int(s * rng.uniform(0.3, 0.36)), int(s * rng.uniform(0.38, 0.44))
    skin = tuple(int(c) for c in rng.integers([150, 110, 90], [240, 190, 160]))
    cv2.ellipse(img, (cx, cy), (rx, ry), 0, 0, 360, skin, -1)
    u = s // 16  # one face unit
    eye_l, eye_r, mouth = (cx - 3 * u, cy - 2 * u), (cx + 3 * u, cy - 2 * u), (cx, cy + 4 * u)
    for eye in (eye_l, eye_r):
        cv2.circle(img, eye, u, (30, 30, 30), -1)
    cv2.line(img, (cx - 2 * u, mouth[1]), (cx + 2 * u, mouth[1]), (90, 40, 40), max(1, u // 2))
    dark, thick = (20, 20, 20), max(2, u // 2)
    for k in np.flatnonzero(cues):
        name = LABELS[k]
        if name == "happy":  # smile
            cv2.ellipse(img, (mouth[0], mouth[1] - u), (3 * u, 2 * u), 0, 20, 160, (120, 20, 20), thick)
        elif name == "sad":  # tear under the left eye
            cv2.circle(img, (eye_l[0], eye_l[1] + 2 * u), u, (40, 90, 230), -1)
        elif name == "anger":  # brows slanted inwards
            cv2.line(img, (eye_l[0] - 2 * u, eye_l[1] - 3 * u), (eye_l[0] + u, eye_l[1] - u), dark, thick)
            cv2.line(img, (eye_r[0] + 2 * u, eye_r[1] - 3 * u), (eye_r[0] - u, eye_r[1] - u), dark, thick)
        elif name == "surprise":  # open round mouth
            cv2.ellipse(img, mouth, (int(1.5 * u), 2 * u), 0, 0, 360, (60, 10, 10), -1)
        elif name == "disgust":  # wrinkled nose
            for dx in (-u, 0, u):
                cv2.line(img, (cx + dx, cy), (cx + dx + u // 2, cy + u), (100, 60, 40), thick)
        elif name == "fear":  # wide white-ringed eyes
            for eye in (eye_l, eye_r):
                cv2.circle(img, eye, 2 * u, (250, 250, 250), max(2, u // 3))
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    noisy = img.astype(np.float32) * rng.uniform(0.7, 1.2) + rng.normal(0, 8, img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_clip(seed: int, clip_id: str, spec: SynthSpec, features: FeatureConfig) -> Clip:
    """One synthetic clip, a pure function of ``seed``."""
    from avemo.deps import require

    cv2 = require("cv2", "pip install 'avemo[runtime]'")
    rng = np.random.default_rng(seed)
    audio_cue, visual_cue = (np.array(p) for p in SYNTH_BENCHMARKS[spec.benchmark])
    labels = (rng.random(NUM_LABELS) < label_prevalence()).astype(np.float32)
    seconds = rng.uniform(spec.min_seconds, spec.max_seconds)
    frames = int(seconds * features.frames_per_second)
    audio_cues = np.where(labels > 0, rng.random(NUM_LABELS) < audio_cue, rng.random(NUM_LABELS) < SPURIOUS_CUE)
    visual_cues = np.where(labels > 0, rng.random(NUM_LABELS) < visual_cue, rng.random(NUM_LABELS) < SPURIOUS_CUE)
    fbank = _synth_fbank(rng, frames, audio_cues, features.num_mel_bins)
    n_faces = max(1, int(seconds * features.fps))
    faces = []
    for _ in range(n_faces):
        shown = visual_cues & (rng.random(NUM_LABELS) < 0.8)  # expressions come and go
        faces.append(encode_jpeg(_draw_face(rng, features.face_size, shown, cv2), features.jpeg_quality))
    return Clip(clip_id=clip_id, fbank=fbank, faces_jpeg=faces, labels=labels)


def write_synthetic_cache(
    out: Path,
    features: FeatureConfig,
    spec: SynthSpec,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write (or resume writing) a synthetic cache; returns clip counts per split."""
    if spec.benchmark not in SYNTH_BENCHMARKS:
        raise AvemoError(f"unknown synthetic benchmark {spec.benchmark!r}; expected one of {sorted(SYNTH_BENCHMARKS)}")
    # The mixed benchmark keeps its old source text, so caches written before benchmarks existed still resume.
    variant = "" if spec.benchmark == "mixed" else f", benchmark={spec.benchmark}"
    writer = CacheWriter(out, features, source=f"synth(seed={seed}, clips={spec.clips}{variant})")
    seeds = np.random.SeedSequence(seed).generate_state(spec.clips)
    index = 0
    for split in SPLITS:
        for _ in range(split_sizes(spec.clips)[split]):
            clip_id = f"synth{index:06d}"
            if not writer.has(split, clip_id):
                writer.add(split, make_clip(int(seeds[index]), clip_id, spec, features))
            index += 1
            if progress:
                progress(1)
    return writer.pack()


def write_mosei_tree(root: Path, videos: dict[str, dict], folds: dict[str, list[str]]) -> tuple[Path, Path]:
    """A few-clip MOSEI tree: labels .csd in the SDK layout, full-length mp4s, and a folds JSON.

    ``videos[id]`` holds ``intervals`` [[s, e], ...], ``emotions`` [[6 scores], ...] and
    optional ``media`` kwargs for write_media (``None`` writes no file; ``b"..."`` writes raw bytes).
    """
    import h5py  # the train extra's

    from avemo.runtime.media.sample import write_media

    vdir = root / "Raw" / "Videos" / "Full" / "Combined"
    vdir.mkdir(parents=True)
    with h5py.File(root / "CMU_MOSEI_Labels.csd", "w") as f:
        data = f.create_group("All Labels").create_group("data")
        f["All Labels"].create_group("metadata")
        for vid, spec in videos.items():
            g = data.create_group(vid)
            emotions = np.asarray(spec["emotions"], np.float64)
            sentiment = np.zeros((len(emotions), 1))
            g["features"] = np.concatenate([sentiment, emotions], axis=1)
            g["intervals"] = np.asarray(spec["intervals"], np.float64)
            media = spec.get("media", {})
            if isinstance(media, bytes):
                (vdir / f"{vid}.mp4").write_bytes(media)
            elif media is not None:
                write_media(vdir / f"{vid}.mp4", **media)
    folds_path = root / "folds.json"
    folds_path.write_text(json.dumps(folds))
    return root, folds_path
