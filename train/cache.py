"""The feature cache: one reproducible on-disk format for MOSEI and synthetic data.

Layout::

    CACHE/cache.json                  format, version, FeatureConfig, source
    CACHE/shards/<split>/<clip>.npz   one clip, written atomically (the resumable unit)
    CACHE/<split>/fbank.npy           float16 [sum T, mel bins], memory-mapped
    CACHE/<split>/faces.npy           uint8, JPEG bytes of every face crop, memory-mapped
    CACHE/<split>/index.npz           labels, per-clip frame offsets, per-face byte offsets
    CACHE/<split>/clips.json          clip ids in index order

Audio is stored as 80 log-Mel bins in float16 and the deltas are added on
load (same code as the runtime); faces as JPEG. All of MOSEI fits in a few GB.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avemo.config import PRESETS, FeatureConfig, ModelConfig, from_dict, to_dict
from avemo.contract import CACHE_META_FILE, LABELS, NUM_LABELS
from avemo.errors import AvemoError
from avemo.io import atomic_write_bytes, atomic_write_json, new_tree, read_versioned_json, replace_tree
from avemo.runtime.media.audio import add_deltas

CACHE_FORMAT = "avemo-cache"
CACHE_VERSION = 1
SPLITS = ("train", "valid", "test")
REPACK = "its arrays, index and clip list disagree (a run killed while packing?); rerun the command that made \
the cache (`avemo prepare` or `avemo synth`, same --out) to repack it from its shards"


@dataclass
class Clip:
    """One labelled clip: raw fbank [T, bins] (T may be 0), JPEG face crops, binary labels."""

    clip_id: str
    fbank: np.ndarray
    faces_jpeg: list[bytes]
    labels: np.ndarray


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    cv2 = _cv2()
    ok, buf = cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise AvemoError("JPEG encoding of a face crop failed")
    return buf.tobytes()


def decode_jpeg(data: np.ndarray | bytes) -> np.ndarray:
    cv2 = _cv2()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise AvemoError("corrupt JPEG face crop in the cache")
    return image[:, :, ::-1]


def _cv2():
    from avemo.deps import require

    return require("cv2", "pip install 'avemo[runtime]'")


class CacheWriter:
    """Writes clips as shards, then packs each split into memory-mappable arrays."""

    def __init__(self, root: Path, features: FeatureConfig, source: str) -> None:
        self.root = Path(root)
        self.features = features
        if self.root.exists() and not self.root.is_dir():
            raise AvemoError(f"{self.root}: exists and is not a directory; name a new or existing cache directory")
        meta_path = self.root / CACHE_META_FILE
        if meta_path.exists():
            existing = read_meta(self.root)
            if existing != features:
                raise AvemoError(
                    f"{meta_path}: this cache was made with other feature settings "
                    f"({_diff(existing, features)}); use a new --out directory"
                )
            made_by = cache_source(self.root)
            if made_by != source:  # e.g. another synthetic seed or benchmark: clips would mix
                raise AvemoError(f"{meta_path}: this cache holds {made_by}, not {source}; use a new --out directory")
        else:
            atomic_write_json(
                meta_path,
                {"format": CACHE_FORMAT, "version": CACHE_VERSION, "source": source, "features": to_dict(features)},
            )

    def shard_path(self, split: str, clip_id: str) -> Path:
        return self.root / "shards" / split / f"{clip_id}.npz"

    def has(self, split: str, clip_id: str) -> bool:
        return self.shard_path(split, clip_id).exists()

    def add(self, split: str, clip: Clip) -> None:
        _check_clip(clip, self.features, where=f"clip {clip.clip_id}")
        buf = io.BytesIO()
        sizes = np.array([len(b) for b in clip.faces_jpeg], np.int64)
        np.savez(
            buf,
            fbank=clip.fbank.astype(np.float16),
            faces=np.frombuffer(b"".join(clip.faces_jpeg), np.uint8),
            face_sizes=sizes,
            labels=clip.labels.astype(np.float32),
        )
        atomic_write_bytes(self.shard_path(split, clip.clip_id), buf.getvalue())

    def discard_partial(self) -> int:
        """Remove the temporary files a killed run left (half-written shards and split arrays); how many.
        Call it while no other process writes this cache (before the workers start, or after them)."""
        stray = list(self.root.glob("**/.*.tmp")) if self.root.is_dir() else []
        for path in stray:
            path.unlink(missing_ok=True)
        return len(stray)

    def pack(self) -> dict[str, int]:
        """(Re)build every split's packed arrays from its shards, each split's folder replaced as a whole
        (a kill leaves the old split or the new one, never a mix); returns clip counts."""
        self.discard_partial()
        counts = {}
        for split in SPLITS:
            shard_dir = self.root / "shards" / split
            paths = sorted(shard_dir.glob("*.npz")) if shard_dir.is_dir() else []
            counts[split] = len(paths)
            if paths:
                _pack_split(self.root / split, paths, self.features.num_mel_bins)
        return counts


def _pack_split(out: Path, shard_paths: list[Path], bins: int) -> None:
    ids, labels, fbanks, faces, face_sizes = [], [], [], [], []
    audio_offsets, face_offsets = [0], [0]
    for path in shard_paths:
        with np.load(path) as shard:
            ids.append(path.stem)
            labels.append(shard["labels"])
            fbanks.append(shard["fbank"].reshape(-1, bins))
            faces.append(shard["faces"])
            face_sizes.append(shard["face_sizes"])
        audio_offsets.append(audio_offsets[-1] + len(fbanks[-1]))
        face_offsets.append(face_offsets[-1] + len(face_sizes[-1]))
    sizes = np.concatenate(face_sizes) if face_sizes else np.zeros(0, np.int64)
    staging = new_tree(out)  # beside the split; what a killed pack left there is removed first
    for name, array in (
        ("fbank.npy", np.concatenate(fbanks).astype(np.float16)),
        ("faces.npy", np.concatenate(faces).astype(np.uint8)),
    ):
        buf = io.BytesIO()
        np.save(buf, array)
        atomic_write_bytes(staging / name, buf.getvalue())
    buf = io.BytesIO()
    np.savez(
        buf,
        labels=np.stack(labels).astype(np.float32),
        audio_offsets=np.array(audio_offsets, np.int64),
        face_offsets=np.array(face_offsets, np.int64),
        byte_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
    )
    atomic_write_bytes(staging / "index.npz", buf.getvalue())
    atomic_write_json(staging / "clips.json", ids)
    replace_tree(staging, out)


def cache_source(root: Path) -> str:
    """What made a cache: ``mosei`` or the synthetic generator's settings."""
    return str(json.loads((Path(root) / CACHE_META_FILE).read_text()).get("source", "unknown"))


def read_meta(root: Path) -> FeatureConfig:
    """The FeatureConfig a cache was made with; a clear error if ``root`` is no cache."""
    path = Path(root) / CACHE_META_FILE
    meta = read_versioned_json(
        path,
        CACHE_FORMAT,
        CACHE_VERSION,
        "feature cache",
        f"{root}: not an avemo feature cache (no {CACHE_META_FILE}); make one with `avemo synth` or `avemo prepare`",
    )
    return from_dict(FeatureConfig, meta["features"], source=str(path))


# Set by the face detector a cache was made with (runtime.faces.features_for_detector), not by the preset.
DETECTOR_FIELDS = ("face_detector", "face_detector_sha256", "face_detect_side", "face_margin", "frame_sampler")


def _preset_fields(features: FeatureConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(features).items() if k not in DETECTOR_FIELDS}


def preset_for_cache(root: Path, preset: str | None = None) -> tuple[str, ModelConfig]:
    """The model preset a cache was made for, with the cache's own features (its face detector included).

    ``preset`` None takes the cache's; a ``preset`` whose feature sizes differ from the cache's is refused,
    naming both."""
    features = read_meta(root)
    made_for = [name for name, cfg in PRESETS.items() if _preset_fields(cfg.features) == _preset_fields(features)]
    if preset is None and not made_for:
        differences = "; ".join(f"{n}: {_diff(features, c.features, DETECTOR_FIELDS)}" for n, c in PRESETS.items())
        raise AvemoError(f"{root}: its features fit no preset (cache vs {differences})")
    if preset is None:
        preset = made_for[0]
    elif preset not in made_for:
        theirs = f"the cache was made for --preset {made_for[0]}" if made_for else "the cache fits no preset"
        raise AvemoError(
            f"--preset {preset} does not fit {root}: {theirs} "
            f"({_diff(features, PRESETS[preset].features, DETECTOR_FIELDS)}: cache vs --preset {preset})"
        )
    return preset, dataclasses.replace(PRESETS[preset], features=features)


def _diff(a: FeatureConfig, b: FeatureConfig, skip: tuple[str, ...] = ()) -> str:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return ", ".join(f"{k}: {da[k]} vs {db[k]}" for k in da if da[k] != db[k] and k not in skip)


def _check_clip(clip: Clip, features: FeatureConfig, where: str) -> None:
    if clip.fbank.ndim != 2 or clip.fbank.shape[1] != features.num_mel_bins:
        raise AvemoError(f"{where}: audio has shape {clip.fbank.shape}, expected [frames, {features.num_mel_bins}]")
    if not np.isfinite(clip.fbank).all():
        raise AvemoError(f"{where}: audio features contain NaN or inf")
    if clip.fbank.shape[0] == 0 and not clip.faces_jpeg:
        raise AvemoError(f"{where}: no audio frames and no faces")
    if clip.labels.shape != (NUM_LABELS,):
        raise AvemoError(f"{where}: labels have shape {clip.labels.shape}, expected ({NUM_LABELS},) for {LABELS}")


class CacheSplit:
    """Read-only, memory-mapped view of one split of a packed cache."""

    def __init__(self, root: Path, split: str, features: FeatureConfig | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.features = read_meta(self.root)
        if features is not None and features != self.features:
            raise AvemoError(f"{self.root}: cache features differ from the model's ({_diff(self.features, features)})")
        d = self.root / split
        if not (d / "index.npz").exists():
            raise AvemoError(f"{d}: split {split!r} is missing from the cache (was it packed?)")
        try:
            with np.load(d / "index.npz") as index:
                self.labels = index["labels"]
                self._audio_offsets = index["audio_offsets"]
                self._face_offsets = index["face_offsets"]
                self._byte_offsets = index["byte_offsets"]
            self.ids: list[str] = json.loads((d / "clips.json").read_text())
            self._fbank = np.load(d / "fbank.npy", mmap_mode="r")
            self._faces = np.load(d / "faces.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError) as exc:  # missing or truncated: a kill, a full disk
            raise AvemoError(f"{d}: {REPACK} ({type(exc).__name__}: {str(exc)[:200]})") from None
        bins = self.features.num_mel_bins
        if self._fbank.ndim != 2 or self._fbank.shape[1] != bins:
            raise AvemoError(f"{d / 'fbank.npy'}: feature dimension {self._fbank.shape[1:]} != {bins} mel bins")
        if problem := self._disagreement():
            raise AvemoError(f"{d}: {REPACK} ({problem})")

    def _disagreement(self) -> str:
        """What in the split's arrays, index and clip list does not fit together ("" when all does)."""
        n = len(self.ids)
        for name, offsets, total in (
            ("audio_offsets", self._audio_offsets, len(self._fbank)),
            ("face_offsets", self._face_offsets, len(self._byte_offsets) - 1),
            ("byte_offsets", self._byte_offsets, self._faces.size),
        ):
            if name != "byte_offsets" and len(offsets) != n + 1:
                return f"clips.json lists {n} clips, index.npz's {name} {len(offsets) - 1}"
            if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != total or (np.diff(offsets) < 0).any():
                return f"index.npz's {name} do not cover its array ({total} entries)"
        if self.labels.shape != (n, NUM_LABELS):
            return f"clips.json lists {n} clips, index.npz has labels of shape {self.labels.shape}"
        return ""

    def __len__(self) -> int:
        return len(self.ids)

    def audio_length(self, i: int) -> int:
        return int(self._audio_offsets[i + 1] - self._audio_offsets[i])

    def face_count(self, i: int) -> int:
        return int(self._face_offsets[i + 1] - self._face_offsets[i])

    def audio(self, i: int) -> np.ndarray:
        """240-d features [T, 3 * bins] float32 (T may be 0: no audio)."""
        raw = np.asarray(self._fbank[self._audio_offsets[i] : self._audio_offsets[i + 1]], np.float32)
        if not np.isfinite(raw).all():
            raise AvemoError(f"{self.root}/{self.split}: clip {self.ids[i]} has NaN or inf audio features")
        if len(raw) == 0:
            return np.zeros((0, self.features.audio_dim), np.float32)
        return add_deltas(raw, self.features.delta_window)

    def faces(self, i: int) -> np.ndarray:
        """Face crops [Tv, S, S, 3] uint8 RGB (Tv may be 0: no face)."""
        s = self.features.face_size
        lo, hi = self._face_offsets[i], self._face_offsets[i + 1]
        crops = [decode_jpeg(self._faces[self._byte_offsets[j] : self._byte_offsets[j + 1]]) for j in range(lo, hi)]
        return np.stack(crops) if crops else np.zeros((0, s, s, 3), np.uint8)
