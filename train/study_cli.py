"""CLI commands that evaluate runs and judge the paper's claims: eval, study. Heavy imports happen inside each."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from avemo.config import PRESETS, TRAIN_PRESETS
from avemo.train.cli import cache_preset


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
    from avemo.train import report
    from avemo.train.evaluate import evaluate_runs

    rows = evaluate_runs(list(runs), data, split, progress=True)
    groups, claims, table = report.eval_tables(rows, aggregate)
    click.echo(table)
    click.echo(report.claims_markdown(claims))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table)
        payload = {"split": split, "rows": rows, "verdicts": claims} | ({"groups": groups} if aggregate else {})
        (out / "table.json").write_text(json.dumps(payload, indent=2) + "\n")
    if results_md:
        from avemo.train.cache import cache_source

        caches = {Path(data)} if data else {Path(r["data"]) for r in rows}
        command = f"avemo eval {' '.join(map(str, runs))} --split {split}" + (" --aggregate" if aggregate else "")
        sources = sorted(cache_source(c) for c in caches)
        results_md.parent.mkdir(parents=True, exist_ok=True)
        results_md.write_text(report.results_markdown(sources, command, split, report.eval_body(table, claims, rows)))
        click.echo(f"wrote {results_md}")


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
    from avemo.train import report
    from avemo.train.cache import cache_source
    from avemo.train.study import run_study

    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(report.VARIANTS))
    if unknown:
        raise click.BadParameter(
            f"unknown {unknown}; expected some of {', '.join(report.VARIANTS)}", param_hint="--variants"
        )
    benchmarks = _benchmarks(data)
    for cache in benchmarks.values():  # every cache must fit the one preset (the first one's by default)
        preset, _ = cache_preset(cache, preset)
    assert preset is not None
    overrides = {"max_epochs": epochs, "patience": patience, "min_epochs": min_epochs}
    base = dataclasses.replace(TRAIN_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    results = run_study(benchmarks, out, preset, base, list(range(seeds)), names, split, progress=not quiet)
    sections = []
    for name, result in results.items():
        section = report.report_markdown(
            name, result["groups"], result["verdicts"], result["selection"], result["segments"]
        )
        click.echo(section)
        sections.append(f"## {name} (`{benchmarks[name]}`: {cache_source(benchmarks[name])})\n\n" + section)
    click.echo(f"wrote {out}/<benchmark>/study.json and study.md")
    if results_md:
        sources = [cache_source(c) for c in benchmarks.values()]
        command = "avemo study " + " ".join(f"--data {k}={v}" for k, v in benchmarks.items())
        command += f" --preset {preset} --seeds {seeds} --variants {','.join(names)} --epochs {base.max_epochs}"
        command += f" --patience {base.patience} --min-epochs {base.min_epochs} --split {split} --out {out}"
        body = report.study_settings_markdown(preset, seeds, base) + "\n".join(sections)
        results_md.parent.mkdir(parents=True, exist_ok=True)
        results_md.write_text(report.results_markdown(sources, command, split, body))
        click.echo(f"wrote {results_md}")
