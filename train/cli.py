"""CLI commands that make caches and train: synth, prepare, train (eval and study: ``study_cli``). Heavy imports
happen inside each command."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from avemo.config import PRECISIONS, PRESETS, REGIMES, TRAIN_PRESETS, ModelConfig, model_config_for_regime
from avemo.options import face_options


@click.command()
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="tiny",
    show_default=True,
    help="Feature sizes and clip count.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Cache directory to write (resumable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--clips", type=int, default=None, help="Total clips (default: the preset's).")
@click.option(
    "--benchmark",
    type=click.Choice(["mixed", "audio-led"]),
    default="mixed",
    show_default=True,
    help="mixed: some emotions heard, others seen; audio-led: every emotion clear in the voice, weaker in the face.",
)
def synth(preset: str, out: Path, seed: int, clips: int | None, benchmark: str) -> None:
    """Write a seeded synthetic MOSEI-like feature cache.

    Labels follow MOSEI's Table-1 frequencies. In the mixed benchmark some
    emotions are cued mostly in the voice, others in the face, all best from
    both; in the audio-led one every emotion is cued in the voice with
    probability 0.9 and in the face with 0.5. Same on-disk format as
    `avemo prepare`.

    \b
    Examples:
      avemo synth --preset tiny --out cache/
      avemo synth --preset tiny --out cache-audio-led/ --benchmark audio-led --clips 1200
    """
    from tqdm import tqdm

    from avemo.train.synth import SYNTH_PRESETS, split_sizes, write_synthetic_cache

    spec = dataclasses.replace(SYNTH_PRESETS[preset], benchmark=benchmark)
    if clips is not None:
        spec = dataclasses.replace(spec, clips=clips)
    with tqdm(total=spec.clips, desc="synth", unit="clip") as bar:
        counts = write_synthetic_cache(out, PRESETS[preset].features, spec, seed, progress=bar.update)
    expected = split_sizes(spec.clips)
    click.echo(f"wrote {out}: " + ", ".join(f"{k} {counts[k]}/{expected[k]}" for k in counts))


@click.command()
@click.option(
    "--mosei-root",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="CMU-MOSEI root (CMU-MultimodalSDK layout).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Cache directory (resumable).")
@click.option("--workers", type=int, default=1, show_default=True, help="Parallel processes.")
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="paper",
    show_default=True,
    help="Feature settings (face size) of the model preset the cache is for.",
)
@click.option(
    "--folds",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Folds JSON (default: the official MOSEI folds shipped with avemo).",
)
@face_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare(
    mosei_root: Path,
    out: Path,
    workers: int,
    preset: str,
    folds: Path | None,
    face_detector: str | None,
    faces: str,
    quiet: bool,
) -> None:
    """Extract features of CMU-MOSEI segments into a feature cache.

    Segments are cut by the label intervals from the full-length videos, audio
    becomes 80 log-Mel bins (deltas on load), faces 3 fps crops. Parallel,
    resumable (rerun the same command), failures logged to OUT/failures.jsonl.

    \b
    Example:
      avemo prepare --mosei-root /data/CMU_MOSEI --out cache/ --workers 2
      avemo prepare --mosei-root /data/CMU_MOSEI --out cache-haar/ --face-detector haar
    """
    from avemo.train.mosei import format_summary
    from avemo.train.mosei import prepare as run_prepare

    detector = face_detector or PRESETS[preset].features.face_detector
    summary = run_prepare(mosei_root, out, PRESETS[preset].features, workers, folds, detector, faces, not quiet)
    click.echo(format_summary(summary))


@click.command()
@click.option("--data", type=click.Path(path_type=Path, exists=True), required=True, help="Feature cache.")
@click.option("--regime", type=click.Choice(REGIMES), default="colearn", show_default=True)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Run directory (resumes if it holds last.pt)."
)
@click.option(
    "--preset", type=click.Choice(sorted(PRESETS)), default=None, help="Model size (default: the one the cache is for)."
)
@click.option(
    "--colearn-mode",
    type=click.Choice(["random", "summed"]),
    default="random",
    show_default=True,
    help="random: each mini-batch is AV, A or V (Eq. 20); summed: the three losses on every batch.",
)
@click.option("--epochs", type=int, default=None, help="Maximum epochs.")
@click.option("--patience", type=int, default=None, help="Early stopping: epochs without a better valid mF1.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--audio-init",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Pretrained audio-encoder state dict.",
)
@click.option(
    "--visual-init",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Pretrained visual-encoder state dict.",
)
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="Autocast in training steps. auto: bf16 on a GPU that has it, else fp16 (loss scaled); fp32 on CPU.",
)
@click.option(
    "--channels-last/--no-channels-last",
    default=False,
    show_default=True,
    help="The face CNN in channels-last memory format (measured slower on an H200; no gain on a 2-core CPU).",
)
@click.option(
    "--pin-memory/--no-pin-memory",
    default=False,
    show_default=True,
    help="Batches in pinned host memory, copied to the GPU asynchronously (CUDA only; not measured yet).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Data-parallel processes on this machine: relaunches under torchrun (gloo on CPU, NCCL on GPUs).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    data: Path,
    regime: str,
    out: Path,
    preset: str | None,
    colearn_mode: str,
    epochs: int | None,
    patience: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int,
    audio_init: Path | None,
    visual_init: Path | None,
    workers: int,
    precision: str,
    channels_last: bool,
    pin_memory: bool,
    nproc: int,
    quiet: bool,
) -> None:
    """Train the cross-modal transformer in one of the paper's regimes.

    Batches are drawn from length buckets and padded to them, so a GPU meets few input shapes.

    \b
    Regimes:
      audio, visual   baselines: one encoder + classifier, no cross-modal encoder
      conventional    A+V only (Eq. 3)
      colearn         interactive co-learning (Eq. 20)

    \b
    Examples:
      avemo train --data cache/ --regime colearn --out runs/colearn
      avemo train --data cache/ --regime colearn --out runs/colearn --nproc 4     # DDP, same global batch
      avemo train --data cache/ --out runs/colearn --precision bf16 --workers 2 --pin-memory   # one GPU
      torchrun --nnodes 2 --nproc-per-node 8 ... -m avemo.train --data cache/ --out runs/colearn   # a cluster
    """
    preset, model_base = cache_preset(data, preset)  # checked before torchrun starts any process
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_under_torchrun(nproc)
        return
    from avemo.train.speed import LoopOptions
    from avemo.train.trainer import train as run_training

    base = TRAIN_PRESETS[preset]
    overrides = {"max_epochs": epochs, "patience": patience, "batch_size": batch_size, "lr": lr}
    train_cfg = dataclasses.replace(
        base,
        regime=regime,
        colearn_mode=colearn_mode,
        seed=seed,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    model_cfg = model_config_for_regime(model_base, regime)
    loop = LoopOptions(workers, precision, channels_last, pin_memory)
    run_training(data, out, model_cfg, train_cfg, audio_init, visual_init, loop, progress=not quiet)


# Set by `avemo train --nproc N` for the processes it starts: where each writes its error, if any.
RELAUNCHED_ENV = "AVEMO_TORCHRUN_ERRORS"


def cache_preset(data: Path, preset: str | None) -> tuple[str, ModelConfig]:
    """The preset ``data`` was made for (an explicit one must agree), said once on stderr when taken from it."""
    from avemo.train.cache import preset_for_cache

    name, config = preset_for_cache(data, preset)
    if preset is None and os.environ.get(RELAUNCHED_ENV) is None:
        click.echo(f"preset {name} (the one {data} was made for; --preset to say it explicitly)", err=True)
    return name, config


def _relaunch_under_torchrun(nproc: int) -> None:
    """Run this same command in ``nproc`` processes under torchrun (this process only waits).

    A process that fails on bad input writes its one-line error to a folder instead of printing it; this
    process prints each distinct line once, in place of torchrun's ChildFailedError traceback."""
    import logging
    import sys
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    args = sys.argv[sys.argv.index("train") + 1 :] if "train" in sys.argv else sys.argv[1:]
    for i, arg in enumerate(args):  # drop --nproc N / --nproc=N: the children are the processes
        if arg == "--nproc":
            del args[i : i + 2]
            break
        if arg.startswith("--nproc="):
            del args[i]
            break
    launch = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "avemo.train", *args])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its own report of a failure
    with tempfile.TemporaryDirectory(prefix="avemo-torchrun-") as errors:
        os.environ[RELAUNCHED_ENV] = errors
        try:
            torchrun(launch)
        except ChildFailedError as exc:
            lines = sorted({p.read_text().strip() for p in Path(errors).glob("rank*.txt")})
            if not lines:  # a crash, not bad input: torchrun's summary names the ranks and exit codes
                lines = [f"training process failed under torchrun: {exc.format_msg().strip().splitlines()[-1]}"]
            for line in lines:
                click.echo(f"Error: {line}", err=True)
            raise SystemExit(1) from None
        finally:
            del os.environ[RELAUNCHED_ENV]
