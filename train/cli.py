"""CLI commands of the training side: synth, train, eval. Heavy imports happen inside each command."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click

from avemo.config import PRESETS, REGIMES, TRAIN_PRESETS, ModelConfig, model_config_for_regime
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
    preset, model_base = _cache_preset(data, preset)  # checked before torchrun starts any process
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
    model_cfg = model_config_for_regime(model_base, regime)
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
@click.option(
    "--aggregate",
    is_flag=True,
    help="Runs of the same training (regime and co-learning mode) are seeds: report mean ± sd over them.",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write table.md and table.json here.")
@click.option(
    "--results-md", type=click.Path(path_type=Path), default=None, help="Also write a RESULTS.md report here."
)
def evaluate(
    runs: tuple[Path, ...], split: str, data: Path | None, aggregate: bool, out: Path | None, results_md: Path | None
) -> None:
    """Table-2 report: per-emotion weighted/macro F1 for every run and inference modality.

    Also judges the paper's claims (a) conventional A+V degrades on A or V
    alone, (b) co-learning keeps A and V at the baselines' level, (c) co-learning
    improves A+V, from the runs given (with several seeds per training and
    --aggregate, against the seeds' spread).

    \b
    Examples:
      avemo eval runs/audio runs/visual runs/conventional runs/colearn --split test
      avemo eval study/mixed/*/seed* --aggregate --out table/      # several seeds per regime
    """
    from avemo.train import study
    from avemo.train.evaluate import evaluate_runs

    rows = evaluate_runs(list(runs), data, split, progress=True)
    groups = study.aggregate(rows, per_run=not aggregate)
    claims = study.verdicts(study.aggregate(rows))
    table = (study.summary_markdown(groups) + "\n" if aggregate else "") + study.table_markdown(groups)
    click.echo(table)
    click.echo(study.claims_markdown(claims))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table)
        payload = {"split": split, "rows": rows, "verdicts": claims} | ({"groups": groups} if aggregate else {})
        (out / "table.json").write_text(json.dumps(payload, indent=2) + "\n")
    if results_md:
        from avemo.train.cache import cache_source

        caches = {Path(data)} if data else {Path(r["data"]) for r in rows}
        body = table + "\n## The paper's claims, as measured (average mF1)\n\n" + study.claims_markdown(claims)
        body += "\n## Training runs\n\n" + study.runs_markdown(rows)
        command = f"avemo eval {' '.join(map(str, runs))} --split {split}" + (" --aggregate" if aggregate else "")
        results_md.parent.mkdir(parents=True, exist_ok=True)
        results_md.write_text(study.results_markdown(sorted(cache_source(c) for c in caches), command, split, body))
        click.echo(f"wrote {results_md}")


# Set by `avemo train --nproc N` for the processes it starts: where each writes its error, if any.
RELAUNCHED_ENV = "AVEMO_TORCHRUN_ERRORS"


def _benchmarks(values: tuple[str, ...]) -> dict[str, Path]:
    """--data NAME=CACHE or CACHE (named after its folder) -> {name: cache}."""
    out: dict[str, Path] = {}
    for value in values:
        name, _, path = value.rpartition("=") if "=" in value else ("", "", value)
        cache = Path(path)
        if not cache.is_dir():
            raise click.BadParameter(f"{cache}: no such cache directory", param_hint="--data")
        name = name or cache.name
        if name in out:
            raise click.BadParameter(f"benchmark name {name!r} given twice", param_hint="--data")
        out[name] = cache
    return out


@click.command()
@click.option(
    "--data",
    "data",
    multiple=True,
    required=True,
    help="A feature cache, or NAME=CACHE; repeat for several benchmarks.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Study directory (resumable).")
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default=None,
    help="Model size (default: the one the caches are for).",
)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds 0..N-1 per training.")
@click.option(
    "--variants",
    default="audio,visual,conventional,colearn,colearn-summed",
    show_default=True,
    help="Trainings to compare (colearn = random draw per mini-batch, colearn-summed = the three losses summed).",
)
@click.option("--epochs", type=int, default=None, help="Maximum epochs (default: the preset's).")
@click.option("--patience", type=int, default=None, help="Early stopping patience (default: the preset's).")
@click.option("--min-epochs", type=int, default=None, help="No early stop before this epoch (default: the preset's).")
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--results-md", type=click.Path(path_type=Path), default=None, help="Write the RESULTS.md report here.")
@click.option("--quiet", is_flag=True, help="No per-epoch progress bar.")
def study(
    data: tuple[str, ...],
    out: Path,
    preset: str | None,
    seeds: int,
    variants: str,
    epochs: int | None,
    patience: int | None,
    min_epochs: int | None,
    split: str,
    results_md: Path | None,
    quiet: bool,
) -> None:
    """Multi-seed study of the paper's claims: train, evaluate, aggregate, judge.

    Trains every variant with every seed on every cache until early stopping
    ends it, evaluates each run's best checkpoint, reports Table 2 as mean ±
    sd over seeds and a verdict per claim of the paper: (a) conventional A+V
    degrades on A or V alone, (b) co-learning keeps A and V at the baselines'
    level, (c) co-learning improves A+V. Rerunning the same command resumes:
    finished runs are only evaluated again. Writes OUT/NAME/study.json and
    study.md per cache.

    \b
    Examples:
      avemo study --data cache/ --out study/ --seeds 3                    # real MOSEI
      avemo study --data mixed=synth-a/ --data audio-led=synth-b/ --preset tiny \\
                  --epochs 80 --patience 6 --out study/ --results-md docs/RESULTS.md
    """
    from avemo.train import study as s
    from avemo.train.cache import cache_source

    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(s.VARIANTS))
    if unknown:
        raise click.BadParameter(
            f"unknown {unknown}; expected some of {', '.join(s.VARIANTS)}", param_hint="--variants"
        )
    benchmarks = _benchmarks(data)
    for cache in benchmarks.values():  # every cache must fit the one preset (the first one's by default)
        preset, _ = _cache_preset(cache, preset)
    assert preset is not None
    overrides = {"max_epochs": epochs, "patience": patience, "min_epochs": min_epochs}
    base = dataclasses.replace(TRAIN_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    results = s.run_study(benchmarks, out, preset, base, list(range(seeds)), names, split, progress=not quiet)
    sections = []
    for name, result in results.items():
        section = s.report_markdown(name, result["groups"], result["verdicts"], result["selection"], result["segments"])
        click.echo(section)
        sections.append(f"## {name} (`{benchmarks[name]}`: {cache_source(benchmarks[name])})\n\n" + section)
    click.echo(f"wrote {out}/<benchmark>/study.json and study.md")
    if results_md:
        settings = (
            f"- Training: preset {preset}; seeds 0-{seeds - 1}; at most {base.max_epochs} epochs, "
            f"early stopping after {base.patience} epochs without a better validation mean mF1 (not before epoch "
            f"{base.min_epochs}); the best validation epoch's checkpoint is evaluated. Co-learning early-stops on "
            "the mean of its A+V, A and V validation mF1, the others on their one modality.\n"
            f"- Verdicts: {s.NOISE_RULE}\n\n"
        )
        sources = [cache_source(c) for c in benchmarks.values()]
        command = "avemo study " + " ".join(f"--data {k}={v}" for k, v in benchmarks.items())
        command += f" --preset {preset} --seeds {seeds} --variants {','.join(names)} --epochs {base.max_epochs}"
        command += f" --patience {base.patience} --min-epochs {base.min_epochs} --split {split} --out {out}"
        results_md.parent.mkdir(parents=True, exist_ok=True)
        results_md.write_text(s.results_markdown(sources, command, split, settings + "\n".join(sections)))
        click.echo(f"wrote {results_md}")


def _cache_preset(data: Path, preset: str | None) -> tuple[str, ModelConfig]:
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
