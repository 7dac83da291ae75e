"""`avemo profile`: the click command of the latency profiler (``avemo.runtime.profile``).

The PyTorch eager baseline is a ``baseline`` the command layer above hands in (`avemo profile` through
its lazy table), so this package never imports torch nor names the training code.
"""

from __future__ import annotations

from pathlib import Path

import click

from avemo.contract import MODALITIES, PRECISIONS, PROFILE_BACKENDS
from avemo.options import choices_option, comma_list
from avemo.runtime.profile.cases import Baseline


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@choices_option(
    "--backend", "backends", "torch,ort", PROFILE_BACKENDS, "Backends (torch = PyTorch eager, the baseline)"
)
@choices_option("--precision", "precisions", "fp32", PRECISIONS, "Graph sets")
@choices_option("--graph", "graphs", "av", MODALITIES, "Graphs")
@click.option(
    "--batch", "batches", default="1,4,16", show_default=True, callback=comma_list(int), help="Clips per call."
)
@click.option("--seconds", default="2,5,10,30", show_default=True, callback=comma_list(float), help="Clip lengths.")
@click.option(
    "--duration",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds of timed calls per candidate and shape, as trtexec's --duration (0: --iters calls exactly).",
)
@click.option(
    "--iters",
    type=int,
    default=1024,
    show_default=True,
    help="At most this many timed calls per candidate and shape (all of them with --duration 0; 1024 is MLPerf's "
    "single-stream minimum query count).",
)
@click.option(
    "--rounds",
    type=int,
    default=4,
    show_default=True,
    help="Interleaved rounds the calls are split into (candidates alternate between rounds).",
)
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed calls per candidate first.")
@click.option("--threads", type=int, default=None, help="CPU threads for ONNX Runtime and torch (default: all cores).")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Checkpoint of the PyTorch baseline (default: the one recorded in manifest.json).",
)
@click.option(
    "--media",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Also time the full pipeline (decode, features, faces, inference) on this file.",
)
@click.option("--no-rss", is_flag=True, help="Skip the peak-RSS probes (one fresh process per backend).")
@click.option("--no-flops", is_flag=True, help="Skip the FLOP count and the GEMM-rate measurement.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("profile"),
    show_default=True,
    help="Folder for profile.json (raw samples), .csv, .md and .png.",
)
def profile(
    models: Path, backends: list[str], precisions: list[str], graphs: list[str], batches: list[int],
    seconds: list[float], duration: float, iters: int, rounds: int, warmup: int, threads: int | None,
    checkpoint: Path | None, media: Path | None, no_rss: bool, no_flops: bool, out: Path,
    baseline: Baseline | None = None,
) -> None:  # fmt: skip
    """Latency p50/p90/p99/max, throughput and real-time factor per backend x precision x graph x batch x length.

    PyTorch eager (from the checkpoint; needs avemo[train]) is the baseline measured in the same run;
    every case reports its speed-up over it. Candidates are timed interleaved.
    Latencies are wall time per call (a monotonic clock) for every backend, at
    the stated thread count on CPU; TensorRT cases add the host-to-device,
    compute and device-to-host split measured with CUDA events. Each case is
    bounded by time (--duration, as trtexec); the files are rewritten after
    each shape, and Ctrl-C keeps the shapes measured so far.

    \b
    Examples:
      avemo profile models/ --backend torch,ort --media clip.mp4 --out bench/   # about 2 min: 1 s per case
      avemo profile models/ --backend torch,ort --precision fp32,int8-cpu --seconds 10 --batch 1 --duration 5
      avemo profile models/ --backend all --precision all --graph all --media clip.mp4 --out bench/
      python scripts/profile_latency.py models/ --backend ort --iters 200   # runtime-only devices
    """
    from avemo.runtime.profile.cases import run_profile
    from avemo.runtime.profile.extras import add_extras
    from avemo.runtime.profile.report import markdown, write_outputs

    if iters < 1 or rounds < 1 or duration < 0:
        raise click.BadParameter("--iters and --rounds must be >= 1, --duration >= 0")
    if media is not None and not media.is_file():
        raise click.BadParameter(f"{media} is not a regular file", param_hint="--media")
    result = run_profile(
        models, backends, precisions, graphs, batches, seconds, iters, rounds, warmup, threads, checkpoint,
        duration=duration or None, on_case=lambda partial: write_outputs(partial, out, plot=False),
        log=lambda line: click.echo(line, err=True), baseline=baseline,
    )  # fmt: skip
    write_outputs(result, out)  # the timings are kept even if a probe below fails
    if not result.get("interrupted"):
        try:
            add_extras(result, rss=not no_rss, flops=not no_flops, media=media, baseline=baseline)
        except KeyboardInterrupt:  # Ctrl-C during the probes: the timings stand, the probes are said missing
            result["interrupted"] = True
            result.setdefault("notes", []).append("interrupted during the memory/FLOP/pipeline probes: not all ran")
    if result.get("interrupted"):
        write_outputs(result, out)
        click.echo(markdown(result))
        click.echo(f"interrupted: the {len(result['cases'])} cases measured are in {out}/profile.*", err=True)
        raise SystemExit(130)
    paths = write_outputs(result, out)
    click.echo(markdown(result))
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
