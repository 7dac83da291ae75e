"""Torch datasets over the feature cache: batches drawn from length buckets and padded to them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from avemo.config import TrainConfig
from avemo.train.cache import CacheSplit


@dataclass
class Batch:
    audio: Tensor  # [B, Ta, 240] float32, zero padded
    audio_lengths: Tensor  # [B] int64 (0: clip has no audio)
    faces: Tensor  # [B, Tv, 3, S, S] float32 in [0, 1]
    face_lengths: Tensor  # [B] int64 (0: no face found)
    labels: Tensor  # [B, 6] float32
    indices: Tensor  # [B] clip indices in the split

    def to(self, device: torch.device) -> Batch:
        # non_blocking: a copy from pinned memory overlaps the GPU's work (a no-op otherwise)
        fields = (self.audio, self.audio_lengths, self.faces, self.face_lengths, self.labels, self.indices)
        return Batch(*(t.to(device, non_blocking=True) for t in fields))

    def inputs(self, modality: str) -> dict[str, Tensor]:
        """Model keyword arguments for 'a', 'v' or 'av' inference."""
        kwargs: dict[str, Tensor] = {}
        if "a" in modality:
            kwargs.update(audio=self.audio, audio_lengths=self.audio_lengths)
        if "v" in modality:
            kwargs.update(faces=self.faces, face_lengths=self.face_lengths)
        return kwargs

    def usable(self, modality: str) -> Tensor:
        """[B] bool: the clip has every modality that ``modality`` needs."""
        ok = torch.ones_like(self.audio_lengths, dtype=torch.bool)
        if "a" in modality:
            ok &= self.audio_lengths > 0
        if "v" in modality:
            ok &= self.face_lengths > 0
        return ok


class ClipDataset(torch.utils.data.Dataset):
    def __init__(self, split: CacheSplit, need_audio: bool = True, need_faces: bool = True) -> None:
        self.split = split
        self.need_audio = need_audio
        self.need_faces = need_faces

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        s = self.split
        audio = s.audio(i) if self.need_audio else np.zeros((0, s.features.audio_dim), np.float32)
        faces = s.faces(i) if self.need_faces else np.zeros((0, 1, 1, 3), np.uint8)
        return i, audio, faces, s.labels[i]


class LengthBuckets:
    """Padded lengths (audio frames, face frames) that batches are padded to, so input shapes repeat.

    Bucket k pads to the (k+1)/count quantile of each length; the last one fits every clip. Each
    new shape costs a GPU's convolution library its kernel choice (~0.15 s on an H200, see
    docs/bench/h200-shape-probe.txt), so an epoch meets at most (buckets + 1) x modalities shapes.
    """

    def __init__(self, lengths: np.ndarray, count: int) -> None:
        """``lengths`` [N, 2]: each clip's audio frames and face frames (0 where that input is unused)."""
        lengths = np.asarray(lengths, np.int64).reshape(-1, 2)
        if count < 1:
            raise ValueError(f"length buckets: count must be >= 1, got {count}")
        if not len(lengths):
            lengths = np.zeros((1, 2), np.int64)
        quantiles = np.arange(1, count + 1) / count
        edges = np.quantile(lengths, quantiles, axis=0, method="higher").astype(np.int64)
        self.edges = np.unique(np.maximum.accumulate(edges, axis=0), axis=0)  # [K, 2], increasing

    def __len__(self) -> int:
        return len(self.edges)

    def of(self, lengths: np.ndarray) -> np.ndarray:
        """[N, 2] lengths -> [N] index of the smallest bucket that fits each clip."""
        fits = (np.asarray(lengths).reshape(-1, 1, 2) <= self.edges[None]).all(axis=2)
        return fits.argmax(axis=1)

    def pad_to(self, audio: int, faces: int) -> tuple[int, int]:
        """The lengths a batch whose longest clip has these lengths is padded to (never below 1)."""
        k = int(self.of(np.array([audio, faces]))[0])
        if not (self.edges[k] >= (audio, faces)).all():
            raise ValueError(f"a clip of ({audio}, {faces}) frames is longer than every length bucket")
        return max(1, int(self.edges[k, 0])), max(1, int(self.edges[k, 1]))


Item = tuple[int, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Collate:
    """Zero-pads a batch to its length bucket (no ``buckets``: to its longest clip)."""

    buckets: LengthBuckets | None = None

    def __call__(self, items: list[Item]) -> Batch:
        b = len(items)
        ta = max(a.shape[0] for _, a, _, _ in items)
        tv = max(f.shape[0] for _, _, f, _ in items)
        ta, tv = self.buckets.pad_to(ta, tv) if self.buckets is not None else (max(1, ta), max(1, tv))
        dim = items[0][1].shape[1]
        size = max(f.shape[1] for _, _, f, _ in items)
        audio = np.zeros((b, ta, dim), np.float32)
        faces = np.zeros((b, tv, size, size, 3), np.uint8)
        for j, (_, a, f, _) in enumerate(items):
            audio[j, : len(a)] = a
            faces[j, : len(f)] = f
        return Batch(
            audio=torch.from_numpy(audio),
            audio_lengths=torch.tensor([len(a) for _, a, _, _ in items], dtype=torch.int64),
            faces=torch.from_numpy(faces).permute(0, 1, 4, 2, 3).float().div_(255.0),
            face_lengths=torch.tensor([len(f) for _, _, f, _ in items], dtype=torch.int64),
            labels=torch.from_numpy(np.stack([lab for *_, lab in items]).astype(np.float32)),
            indices=torch.tensor([i for i, *_ in items], dtype=torch.int64),
        )


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches drawn from length buckets, shuffled reproducibly per (seed, epoch); every clip once per epoch."""

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        shard: tuple[int, int] = (0, 1),
        buckets: LengthBuckets | None = None,
    ) -> None:
        """``lengths`` [N, 2] audio and face frames per clip; ``buckets`` default: TrainConfig's count of them."""
        self.lengths = np.asarray(lengths, np.int64).reshape(-1, 2)
        self.buckets = buckets if buckets is not None else LengthBuckets(self.lengths, TrainConfig.length_buckets)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.rank, self.world = shard

    def __len__(self) -> int:
        return sum(1 for _ in self._global())

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's batches: training (shuffle) takes every world-th clip of each global batch,
        so a step covers the same clips for any number of processes (a global batch with fewer clips
        than processes is dropped on every rank alike: no rank may sit a step out); evaluation
        deals whole batches round-robin, dropping nothing.
        """
        for k, batch in enumerate(self._global()):
            if self.world == 1:
                yield batch
            elif self.shuffle and len(batch) >= self.world:
                yield batch[self.rank :: self.world]
            elif not self.shuffle and k % self.world == self.rank:
                yield batch

    def _global(self) -> Iterator[list[int]]:
        """Full batches from each bucket, shortest bucket first; a bucket's remainder (fewer clips than a batch)
        joins the next bucket (padded longer), so only the last bucket may end in a short batch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        of = self.buckets.of(self.lengths)
        batches, carry = [], np.zeros(0, np.int64)
        for k in range(len(self.buckets)):
            members = np.flatnonzero(of == k)
            pool = np.concatenate([carry, rng.permutation(members) if self.shuffle else members])
            full = len(pool) // self.batch_size * self.batch_size
            batches += [pool[i : i + self.batch_size].tolist() for i in range(0, full, self.batch_size)]
            carry = pool[full:]
        if len(carry):
            batches.append(carry.tolist())
        order = rng.permutation(len(batches)) if self.shuffle else range(len(batches))
        yield from (batches[k] for k in order)


def clip_lengths(split: CacheSplit, need_audio: bool = True, need_faces: bool = True) -> np.ndarray:
    """[N, 2] audio frames and face frames of each clip (0 for an input the loader does not read)."""
    return np.array(
        [
            (split.audio_length(i) if need_audio else 0, split.face_count(i) if need_faces else 0)
            for i in range(len(split))
        ],
        np.int64,
    ).reshape(-1, 2)


def make_loader(
    split: CacheSplit,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = False,
    workers: int = 0,
    need_audio: bool = True,
    need_faces: bool = True,
    shard: tuple[int, int] = (0, 1),
    buckets: int = TrainConfig.length_buckets,
    pad_to_bucket: bool = True,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """Batches drawn from ``buckets`` length buckets and padded to them (``pad_to_bucket`` False: to each batch's
    longest clip, as before buckets; scripts/bench_training.py compares the two); ``shard`` = (rank, world) gives
    this process its share of each global batch."""
    lengths = clip_lengths(split, need_audio, need_faces)
    padded = LengthBuckets(lengths, buckets)
    sampler = BucketBatchSampler(lengths, batch_size, seed, shuffle, shard, padded)
    return torch.utils.data.DataLoader(
        ClipDataset(split, need_audio, need_faces),
        batch_sampler=sampler,
        collate_fn=Collate(padded if pad_to_bucket else None),
        num_workers=workers,
        pin_memory=pin_memory,
    )
