"""How much the INT8 drop depends on the calibration draw: `avemo calibrate --max-drop` over seeds and sample sizes.

Each run calibrates a copy of MODELS; the search records the A+V mF1 drop on the
decision split with every layer int8 (before) and with its kept layers (after).
Prints a Markdown table and the spread (mean, sample std, range) per sample size.

    python scripts/calibration_draws.py demo_out/models --data demo_out/cache --samples 32,128 --seeds 0,1,2
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import click
import numpy as np


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--samples", default="32,128", show_default=True, help="Calibration clip counts to compare.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Calibration draws per count.")
@click.option("--max-drop", type=float, default=0.5, show_default=True)
@click.option("--method", default="entropy", show_default=True)
def main(models: Path, data: Path, samples: str, seeds: str, max_drop: float, method: str) -> None:
    from avemo.calibration.calibrate import calibrate
    from avemo.errors import AvemoError

    rows = []
    for n in (int(s) for s in samples.split(",")):
        for seed in (int(s) for s in seeds.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "models"
                shutil.copytree(models, copy, ignore=shutil.ignore_patterns("int8", "int8-cpu"))
                started = time.perf_counter()
                settings = {"cpu_int8": "never", "latency_rounds": 1, "accept_miss": True, "log": lambda *_: None}
                try:
                    report = calibrate(copy, data, samples=n, method=method, seed=seed, max_drop=max_drop, **settings)
                except AvemoError as exc:  # one draw failing (e.g. parity) is a result, not the end of the table
                    click.echo(f"samples {n} seed {seed}: {exc}", err=True)
                    continue
            s = report["search"]
            test = report["accuracy"].get("test", {}).get(s["graph"], {}).get("int8", {}).get("mF1_drop")
            rows.append((n, seed, s["before"]["drop"], s["after"]["drop"], test, len(s["kept"]),
                         s["quantized_share"], time.perf_counter() - started))  # fmt: skip
            click.echo(f"samples {n} seed {seed}: {rows[-1][2]:+.2f} -> {rows[-1][3]:+.2f}", err=True)
    click.echo("| samples | seed | valid drop, all int8 | valid drop, searched | test drop, searched | kept | "
               "int8 layers | seconds |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for n, seed, before, after, test, kept, share, secs in rows:
        test_text = "-" if test is None else f"{test:+.2f}"
        click.echo(f"| {n} | {seed} | {before:+.2f} | {after:+.2f} | {test_text} | {kept} | {100 * share:.0f} % | "
                   f"{secs:.0f} |")  # fmt: skip
    click.echo("\n| samples | before: mean / std / range | after: mean / std / range |\n|---|---|---|")
    for n in sorted({r[0] for r in rows}):
        cols = [np.array([r[k] for r in rows if r[0] == n]) for k in (2, 3)]
        click.echo(f"| {n} | " + " | ".join(_spread(c) for c in cols) + " |")


def _spread(x: np.ndarray) -> str:
    std = x.std(ddof=1) if len(x) > 1 else 0.0
    return f"{x.mean():+.2f} / {std:.2f} / {x.min():+.2f} .. {x.max():+.2f}"


if __name__ == "__main__":
    main()
