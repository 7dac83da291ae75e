"""CLI commands of the training side: synth, train, eval. Heavy imports happen inside each command."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click

from avemo.config import PRESETS, REGIMES, TRAIN_PRESETS, model_config_for_regime
from avemo.runtime.cli import face_options


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
def synth(preset: str, out: Path, seed: int, clips: int | None) -> None:
    """Write a seeded synthetic MOSEI-like feature cache.

    Labels follow MOSEI's Table-1 frequencies; some emotions are cued mostly in
    the voice, others in the face, all best from both. Same on-disk format as
    `avemo prepare`.

    \b
    Example:
      avemo synth --preset tiny --out cache/
    """
    from tqdm import tqdm

    from avemo.train.synth import SYNTH_PRESETS, split_sizes, write_synthetic_cache

    spec = SYNTH_PRESETS[preset]
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
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper", show_default=True)
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
    preset: str,
    colearn_mode: str,
    epochs: int | None,
    patience: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int,
    audio_init: Path | None,
    visual_init: Path | None,
    workers: int,
    nproc: int,
    quiet: bool,
) -> None:
    """Train the cross-modal transformer in one of the paper's regimes.

    \b
    Regimes:
      audio, visual   baselines: one encoder + classifier, no cross-modal encoder
      conventional    A+V only (Eq. 3)
      colearn         interactive co-learning (Eq. 20)

    \b
    Examples:
      avemo train --data cache/ --regime colearn --out runs/colearn
      avemo train --data cache/ --regime colearn --out runs/colearn --nproc 4     # DDP, same global batch
      torchrun --nnodes 2 --nproc-per-node 8 ... -m avemo.train --data cache/ --out runs/colearn   # a cluster
    """
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_under_torchrun(nproc)
        return
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
    model_cfg = model_config_for_regime(PRESETS[preset], regime)
    run_training(data, out, model_cfg, train_cfg, audio_init, visual_init, workers, progress=not quiet)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True)
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Cache (default: the one each run trained on).",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write table.md and table.json here.")
@click.option(
    "--results-md", type=click.Path(path_type=Path), default=None, help="Also write a RESULTS.md report here."
)
def evaluate(runs: tuple[Path, ...], split: str, data: Path | None, out: Path | None, results_md: Path | None) -> None:
    """Table-2 report: per-emotion weighted/macro F1 for every run and inference modality.

    \b
    Example:
      avemo eval runs/audio runs/visual runs/conventional runs/colearn --split test
    """
    from avemo.train.evaluate import colearn_comparison, evaluate_runs, table_markdown

    rows = evaluate_runs(list(runs), data, split)
    table = table_markdown(rows)
    comparison = colearn_comparison(rows)
    click.echo(table)
    for line in comparison:
        click.echo(line)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table)
        (out / "table.json").write_text(json.dumps({"split": split, "rows": rows}, indent=2) + "\n")
    if results_md:
        results_md.parent.mkdir(parents=True, exist_ok=True)
        results_md.write_text(_results_report(rows, table, comparison, split, runs, data))
        click.echo(f"wrote {results_md}")


def _results_report(
    rows: list[dict], table: str, comparison: list[str], split: str, runs: tuple[Path, ...], data: Path | None
) -> str:
    from avemo.machine import describe
    from avemo.train.cache import CACHE_META_FILE

    source = json.loads((Path(data) / CACHE_META_FILE).read_text())["source"] if data else "see runs"
    trained = {r["run"]: (r["regime"], r["training"]) for r in rows}
    run_lines = "".join(
        f"| {regime} | {t['seed']} | {t['epochs']} | {t['best_epoch']} | {t['clips_per_second']:.1f} |\n"
        for regime, t in trained.values()
    )
    return (
        "# Results\n\n"
        f"**Synthetic data, not CMU-MOSEI**: made by `avemo synth` ({source}). These numbers check "
        "that the regimes train and evaluate end to end; they say nothing about the paper's MOSEI figures.\n\n"
        f"- Command: `make demo` (`avemo eval {' '.join(map(str, runs))} --split {split}`)\n"
        f"- Split: {split}; threshold 0.5; F1 as scikit-learn `f1_score(average='weighted'|'macro')`, percent\n"
        f"- Machine: {describe()}\n\n"
        + table
        + "\n## Co-learning vs conventional, as measured\n\n"
        + "".join(f"- {line}\n" for line in comparison)
        + "\n## Training runs\n\n| regime | seed | epochs | best epoch | train clips/s (median) |\n"
        + "|---|---|---|---|---|\n"
        + run_lines
    )


def _relaunch_under_torchrun(nproc: int) -> None:
    """Run this same command in ``nproc`` processes under torchrun (this process only waits)."""
    import subprocess
    import sys

    args = sys.argv[sys.argv.index("train") + 1 :] if "train" in sys.argv else sys.argv[1:]
    for i, arg in enumerate(args):  # drop --nproc N / --nproc=N: the children are the processes
        if arg == "--nproc":
            del args[i : i + 2]
            break
        if arg.startswith("--nproc="):
            del args[i]
            break
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    code = subprocess.call([*command, "-m", "avemo.train", *args])
    if code:
        raise SystemExit(code)
