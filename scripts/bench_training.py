"""Training throughput with and without length buckets, epoch 1 against epoch 2, in one run.

    .venv/bin/python scripts/bench_training.py --preset tiny --clips 200

Trains co-learning (a random A, V or A+V draw per batch) for two epochs from the same initial weights
under each loop setting, on a seeded synthetic cache made here, and prints clips/s per epoch, the distinct
input shapes an epoch meets ((modality, batch, audio frames, face frames) of each step) and the share of
padded frames. ``before`` pads each batch to its longest clip (as the sampler did before buckets; the old
training-mode CNN additionally saw only the real frames, a new frame count nearly every batch), ``after``
pads to the batch's length bucket. On a GPU (taken when torch sees one) each new shape costs cuDNN a kernel
choice; on a CPU it costs little, so there the numbers show the price of padding and of the loop options.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avemo.config import PRESETS, TrainConfig, model_config_for_regime
from avemo.machine import describe
from avemo.train.cache import CacheSplit
from avemo.train.data import Batch, BucketBatchSampler, LengthBuckets, make_loader
from avemo.train.distributed import Dist
from avemo.train.model import CrossModalTransformer
from avemo.train.speed import resolve_precision
from avemo.train.synth import SynthSpec, write_synthetic_cache
from avemo.train.trainer import Executor, StepLoss, cmvn_stats, colearn_draws, training_modalities


class CountingExecutor(Executor):
    """An Executor that notes each step's input shapes and real/padded frame counts."""

    def step(self, batch: Batch, chosen: tuple[str, ...]) -> float | None:
        for modality in chosen:
            ta = batch.audio.shape[1] if "a" in modality else 0
            tv = batch.faces.shape[1] if "v" in modality else 0
            self.shapes.add((modality, len(batch.labels), ta, tv))
        self.real += int(batch.audio_lengths.sum() + batch.face_lengths.sum())
        self.padded += len(batch.labels) * (batch.audio.shape[1] + batch.faces.shape[1])
        return super().step(batch, chosen)


def executor(split: CacheSplit, setting: dict, args: argparse.Namespace, device: torch.device) -> CountingExecutor:
    """A co-learning Executor of one setting, from seed 0's weights."""
    torch.manual_seed(0)
    cfg = model_config_for_regime(PRESETS[args.preset], "colearn")
    tcfg = TrainConfig(regime="colearn", batch_size=args.batch_size, lr=1e-3, seed=0)
    model = CrossModalTransformer(cfg).to(device)
    with torch.no_grad():
        model.set_cmvn(*(t.to(device) for t in cmvn_stats(split)))
    if setting["channels_last"]:
        model.visual.cnn.to(memory_format=torch.channels_last)
    optimizer = torch.optim.RAdam(model.parameters(), lr=tcfg.lr)
    precision = resolve_precision(setting["precision"], device)
    ex = CountingExecutor(model, optimizer, StepLoss(model), tcfg, Dist(device=device), precision)
    ex.shapes, ex.real, ex.padded = set(), 0, 0
    return ex


def run(split: CacheSplit, setting: dict, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Two epochs of one setting; per epoch clips/s, distinct shapes, real-frame share."""
    ex = executor(split, setting, args, device)
    loader = make_loader(
        split, args.batch_size, 0, shuffle=True, workers=setting["workers"], pad_to_bucket=setting["pad"]
    )
    epochs = []
    for epoch in (1, 2):
        ex.shapes, ex.real, ex.padded = set(), 0, 0
        stats = ex.train_epoch(loader, epoch, progress=False)
        epochs.append({"clips_per_second": stats["clips_per_second"], "shapes": len(ex.shapes),
                       "real": ex.real / ex.padded})  # fmt: skip
    return epochs


def alternate_steps(split: CacheSplit, args: argparse.Namespace, device: torch.device, steps: int = 15) -> None:
    """A+V steps on one batch, the settings taking turns step by step, so load drifts hit them alike."""
    names = ("after (length buckets)", "after, bf16 autocast", "after, channels-last CNN")
    executors = {name: executor(split, SETTINGS[name], args, device) for name in names}
    batch = next(iter(make_loader(split, args.batch_size, shuffle=True)))
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(steps):
        for name, ex in executors.items():
            start = time.perf_counter()
            ex.step(batch, ("av",))
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[names[0]])
    print(f"| A+V step, taking turns ({steps} each) | median ms | vs fp32 |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {1000 * statistics.median(values):.0f} | {statistics.median(values) / base:.2f}x |")


def simulated_shapes(clips: int, batch_size: int, seconds: tuple[float, float]) -> None:
    """New input shapes per epoch for a MOSEI-sized set of lengths (no training: the sampler and the draws only).
    A GPU pays its kernel choice once per shape, so the shapes an epoch meets first are its cost."""
    rng = np.random.default_rng(0)
    duration = rng.uniform(*seconds, clips)
    lengths = np.stack([np.round(100 * duration), np.ceil(3 * duration)], axis=1).astype(np.int64)
    buckets = LengthBuckets(lengths, TrainConfig.length_buckets)
    print(f"simulated: {clips} clips of {seconds[0]}-{seconds[1]} s, batch {batch_size}, co-learning draws")
    print("| padding | new shapes epoch 1 | epoch 2 | epoch 3 |\n|---|---|---|---|")
    for name in ("real frames to the CNN (before)", "each batch's longest clip", "length buckets (after)"):
        seen: set[tuple] = set()
        new = []
        sampler = BucketBatchSampler(lengths, batch_size, 0, buckets=buckets)
        for epoch in (1, 2, 3):
            sampler.epoch, before = epoch, len(seen)
            draws = colearn_draws(0, epoch, training_modalities(TrainConfig(regime="colearn")))
            for batch in sampler:
                modality, (ta, tv) = next(draws), lengths[batch].max(axis=0)
                if name.startswith("length"):
                    ta, tv = buckets.pad_to(ta, tv)
                cnn = int(lengths[batch, 1].sum()) if name.startswith("real") else len(batch) * tv
                seen.add((modality, len(batch), ta if "a" in modality else 0, cnn if "v" in modality else 0))
            new.append(len(seen) - before)
        print(f"| {name} | {new[0]} | {new[1]} | {new[2]} |")


SETTINGS = {
    "before (pad to longest)": {"pad": False, "precision": "auto", "channels_last": False, "workers": 0},
    "after (length buckets)": {"pad": True, "precision": "auto", "channels_last": False, "workers": 0},
    "after, bf16 autocast": {"pad": True, "precision": "bf16", "channels_last": False, "workers": 0},
    "after, channels-last CNN": {"pad": True, "precision": "auto", "channels_last": True, "workers": 0},
    "after, 1 worker": {"pad": True, "precision": "auto", "channels_last": False, "workers": 1},
    "after, 2 workers": {"pad": True, "precision": "auto", "channels_last": False, "workers": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--clips", type=int, default=200, help="synthetic clips (about 70 %% train)")
    parser.add_argument("--seconds", type=float, nargs=2, default=(1.0, 6.0), help="clip length range")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the settings")
    parser.add_argument("--only", nargs="*", default=None, help="settings to run (default: all)")
    parser.add_argument("--alternate", action="store_true", help="only time steps of fp32, bf16, channels-last in turn")
    parser.add_argument("--simulate", type=int, default=0, help="only count the shapes of this many clips' lengths")
    args = parser.parse_args()
    if args.simulate:
        simulated_shapes(args.simulate, args.batch_size, args.seconds)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = {k: v for k, v in SETTINGS.items() if args.only is None or k in args.only}
    low, high = args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        spec = SynthSpec(clips=args.clips, min_seconds=low, max_seconds=high)
        write_synthetic_cache(Path(tmp), PRESETS[args.preset].features, spec, seed=0)
        split = CacheSplit(Path(tmp), "train", PRESETS[args.preset].features)
        print(f"{describe()}; torch {torch.__version__} on {device}; preset {args.preset}, {len(split)} train clips "
              f"of {low}-{high} s, batch {args.batch_size}, co-learning")  # fmt: skip
        if args.alternate:
            alternate_steps(split, args, device)
            return
        print("| round | setting | epoch 1 clips/s | epoch 2 clips/s | shapes, epoch 1 / 2 | real frames |")
        print("|---|---|---|---|---|---|")
        for round_ in range(1, args.repeats + 1):  # rounds interleave the settings, so load drifts hit them alike
            base = None
            for name, setting in settings.items():
                first, second = run(split, setting, args, device)
                base = base or second["clips_per_second"]
                print(f"| {round_} | {name} | {first['clips_per_second']:.1f} | {second['clips_per_second']:.1f} "
                      f"({second['clips_per_second'] / base:.2f}x) | {first['shapes']} / {second['shapes']} "
                      f"| {100 * second['real']:.0f} % |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
