"""Torch datasets over the feature cache: padding collate and length-bucketed batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

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
        return Batch(*(t.to(device) for t in (self.audio, self.audio_lengths, self.faces, self.face_lengths,
                                               self.labels, self.indices)))  # fmt: skip

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


def collate(items: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> Batch:
    b = len(items)
    ta = max(1, max(a.shape[0] for _, a, _, _ in items))
    tv = max(1, max(f.shape[0] for _, _, f, _ in items))
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
    """Shuffled batches of similar length (less padding), reproducible per (seed, epoch)."""

    def __init__(
        self, lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool = True, shard: tuple[int, int] = (0, 1)
    ) -> None:
        self.lengths = lengths
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
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            yield from (order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        chunk = self.batch_size * 50
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[i : i + self.batch_size].tolist() for i in range(0, len(part), self.batch_size)]
        for k in rng.permutation(len(batches)):
            yield batches[k]


def make_loader(
    split: CacheSplit,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = False,
    workers: int = 0,
    need_audio: bool = True,
    need_faces: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> torch.utils.data.DataLoader:
    """Length-bucketed batches; ``shard`` = (rank, world) gives this process its share of each global batch."""
    lengths = np.array([split.audio_length(i) + 30 * split.face_count(i) for i in range(len(split))])
    sampler = BucketBatchSampler(lengths, batch_size, seed, shuffle, shard)
    return torch.utils.data.DataLoader(
        ClipDataset(split, need_audio, need_faces),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
    )
