"""Runtime-side CLI commands (torch-free): verify, infer."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import click

from avemo.config import FeatureConfig
from avemo.contract import FACE_MODES, MODALITIES, ORT_PROVIDERS, PARITY_FILE, PRECISION_DIRS, graph_file


def face_options(command: click.Command) -> click.Command:
    """--face-detector and --faces, shared by `prepare` (training crops) and `infer` (serving crops)."""
    command = click.option(
        "--faces",
        type=click.Choice(FACE_MODES),
        default="speaker",
        show_default=True,
        help="With several faces in view: the one whose mouth moves with the audio (else the largest), "
        "or always the largest in each frame.",
    )(command)
    return click.option(
        "--face-detector",
        default=None,
        metavar="yunet|haar|PATH",
        help="Face detector: yunet (a CNN, packaged, the default), haar (OpenCV's cascade) or a YuNet ONNX "
        "file. prepare records it in the cache; infer uses the model's own and warns about any other.",
    )(command)


FRAME_SHIFT_S = FeatureConfig.frame_shift_ms / 1000  # the audio frame shift: the finest step a window moves by


def positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A finite number > 0 (or not given): inf and nan are refused too."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value:g}: expected a finite number > 0")
    return value


def hop_step(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A window hop: ``positive`` and at least one audio frame (a window per frame at most)."""
    value = positive(ctx, param, value)
    if value is not None and value < FRAME_SHIFT_S:
        raise click.BadParameter(f"{value:g} s is below one audio frame ({FRAME_SHIFT_S:g} s)")
    return value


def cores(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """A thread count from 1 to this machine's cores (or not given: all of them)."""
    if value is not None and not 1 <= value <= (os.cpu_count() or 1):
        raise click.BadParameter(f"{value}: expected 1 to {os.cpu_count()} (the cores here)")
    return value


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--threads", type=int, default=None, callback=cores, help="ONNX Runtime intra-op threads.")
def verify(models: Path, threads: int | None) -> None:
    """Re-hash every file of an exported model directory and re-run its parity checks.

    Needs only the runtime (no torch): the reference inputs and probabilities
    were stored at export time in parity.npz. Each graph is linted (no integer
    arithmetic in fp16), run on samples that reach the engine profile's corners
    (30 s, the largest batch, one face frame, fp16-rounding lengths) and checked
    to give a clip the same answer alone as padded into a batch. Graphs that
    carry fp16 run in ONNX's reference evaluator, which honours fp16 as
    TensorRT does (ONNX Runtime on CPU computes fp16 ops in fp32): seconds
    per graph.

    \b
    Example:
      avemo verify models/
    """
    from avemo.runtime.models.manifest import load_manifest
    from avemo.runtime.models.parity import check_parity, load_references, parity_samples

    manifest = load_manifest(models, verify=True)
    click.echo(f"{models}: {len(manifest.data['files'])} files match manifest.json")
    click.echo(
        "| precision | graph | runner | max abs diff | tolerance | padded vs alone | label agreement |\n"
        "|---|---|---|---|---|---|---|"
    )
    samples = parity_samples(manifest.features, manifest.modalities)
    references = load_references(models / PARITY_FILE)
    for precision, folder in manifest.graph_sets():
        report = check_parity(models / folder, samples, references, precision, threads)
        tol = manifest.data["precisions"][precision]["parity_tolerance"]
        for modality, r in report.items():
            click.echo(
                f"| {precision} | {folder}/{graph_file(modality)} | {r['runner']} | {r['max_abs_diff']:.2e} | "
                f"{tol:.0e} | {r['padding_invariance']:.1e} | {100 * r['label_agreement']:.1f}% |"
            )
    click.echo("verified")


@click.command()
@click.argument("media", nargs=-1)
@click.option(
    "--models",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="Exported model directory (manifest.json).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8", "int8-cpu"]),
    default=None,
    help="Default: fp32 on ONNX Runtime; on TensorRT the engines built for this GPU (fp16, else int8, else fp32).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "trt", "ort"]),
    default="auto",
    show_default=True,
    help="auto: TensorRT where it imports and engines exist for this GPU, else ONNX Runtime (stderr says which).",
)
@click.option(
    "--ort-provider",
    type=click.Choice(list(ORT_PROVIDERS)),
    default="cpu",
    show_default=True,
    help="ONNX Runtime execution provider (cuda, tensorrt: onnxruntime-gpu's), for the graphs and the face detector.",
)
@click.option("--device", "device_id", type=int, default=0, show_default=True, help="TensorRT: CUDA device index.")
@click.option(
    "--threads", type=int, default=None, callback=cores, help="ONNX Runtime intra-op threads (default: all cores)."
)
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Probability for a label to be on.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the lines to results.jsonl or .csv as each file ends; a rerun skips files already in it.",
)
@click.option("--retry-errors", is_flag=True, help="With --out: redo the files whose line is an error.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Files recognised in parallel."
)
@face_options
@click.option("--window", type=float, default=None, callback=positive, help="Timeline: window length in seconds.")
@click.option(
    "--hop", type=float, default=None, callback=hop_step, help="Timeline: hop in seconds (default: the window)."
)
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    callback=positive,
    help="Live sources: seconds without data (or to connect) before giving up with an error.",
)
@click.option("--max-seconds", type=float, default=None, callback=positive, help="Stop after this much stream time.")
@click.option(
    "--reconnect",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Live sources: open the stream again this many times after it breaks or stalls.",
)
@click.option(
    "--camera",
    default=None,
    metavar="INDEX|PATH|PIPELINE",
    help="Read a camera through OpenCV: 0 (USB/V4L2), a device path, or a GStreamer pipeline ending in "
    "appsink (Jetson CSI). With --mic, both are read together on one capture clock.",
)
@click.option(
    "--mic", default=None, metavar="FORMAT:DEVICE", help="A microphone through FFmpeg: alsa:default, pulse:default."
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --window: PNG of the six probabilities over time.",
)
def infer(
    media: tuple[str, ...],
    models: Path,
    precision: str | None,
    backend: str,
    ort_provider: str,
    device_id: int,
    threads: int | None,
    threshold: float,
    out: Path | None,
    retry_errors: bool,
    workers: int,
    face_detector: str | None,
    faces: str,
    window: float | None,
    hop: float | None,
    timeout: float,
    max_seconds: float | None,
    reconnect: int,
    camera: str | None,
    mic: str | None,
    plot: Path | None,
) -> None:
    """Recognise emotions in media files or live streams: one JSON line per file (or per window).

    The graph is chosen by what each clip has: A+V, or A when no face is found,
    or V when there is no audio stream; the line says which ("modality").
    Each line has the six probabilities, the thresholded "labels", the most
    probable emotion ("dominant") and the real-time factor ("rtf").
    A file that cannot be read gets an "error" line; the others still run.

    MEDIA may be files, folders (their media files, recursively), globs
    ("clips/*.mp4", quoted) or @list.txt (one path per line). With --out the
    lines go to that .jsonl or .csv file as each file ends, and running the
    same command again skips the files already there (--retry-errors redoes
    the errors): a job over thousands of files resumes after a crash.

    MEDIA may also be a network stream (udp://, rtp://, rtsp://, http(s)://,
    srt://, tcp://) or an FFmpeg input FORMAT:INPUT (lavfi:..., alsa:...):
    those need --window, print each window's line as soon as its data has
    arrived (with latency_ms), and run until the stream ends, --max-seconds,
    or Ctrl-C (which stops after the current window). A summary goes to stderr.

    \b
    Examples:
      avemo infer clip.mp4 --models models/
      avemo infer clips/ --models models/ --workers 2 --out results.jsonl     # rerun: resumes
      avemo infer @list.txt --models models/ --out results.csv --retry-errors
      avemo infer clip.mp4 --models models/ --backend ort --ort-provider cuda  # onnxruntime-gpu
      avemo infer talk.mp4 --models models/ --window 5 --hop 2.5 --plot talk.png
      avemo infer udp://127.0.0.1:5000 --models models/ --window 5 --hop 1
      avemo infer rtsp://camera.local/stream --models models/ --window 5 --hop 1 --timeout 5
      avemo infer "lavfi:testsrc=rate=30[out0];sine=f=220[out1]" --models models/ --window 2 --max-seconds 10
      avemo infer --camera 0 --mic alsa:default --models models/ --window 5 --hop 1
    """
    import signal
    import threading

    from avemo.errors import AvemoError
    from avemo.runtime.backends.ort import providers_for
    from avemo.runtime.batch import ResultsFile, expand_media, recognize_files, result_line
    from avemo.runtime.recognizer import Recognizer
    from avemo.runtime.stream.live import in_ffmpeg, is_live

    if plot:  # before any work: the runtime install has no matplotlib
        from avemo.deps import require

        require("matplotlib", "pip install matplotlib")
    if plot and not window:
        raise click.BadParameter("--plot draws a timeline: give --window too", param_hint="--plot")
    if out and window:
        raise click.BadParameter("--out resumes whole files; with --window redirect stdout", param_hint="--out")
    if ort_provider != "cpu" and backend == "trt":
        raise click.BadParameter("is for --backend ort (or auto)", param_hint="--ort-provider")
    if camera is not None or mic is not None:
        device = "+".join(filter(None, [f"camera:{camera}" if camera is not None else None, mic]))
        media = (*media, device)
    if not media:
        raise click.UsageError("give MEDIA (files, folders, globs, @list.txt or stream URLs), --camera or --mic")
    sources = expand_media(media, is_live)
    live = [m for m, _ in sources if is_live(m)]
    if live and window is None:
        raise click.BadParameter(f"{live[0]} is a live source: give --window (and --hop)", param_hint="--window")
    results = ResultsFile(out, retry_errors) if out else None
    if results is not None:
        todo = [(s, e) for s, e in sources if not results.skip(s)]
        if len(todo) < len(sources):
            click.echo(f"{out}: {len(sources) - len(todo)} of {len(sources)} files already done, skipped", err=True)
        sources = todo
    providers = providers_for(ort_provider)
    recognizer = Recognizer(
        models, precision, threads, face_detector, threshold, providers, "ort" if ort_provider != "cpu" else backend,
        faces, device_id,
    )  # fmt: skip
    click.echo(f"backend: {recognizer.backend_reason}", err=True)
    stop = threading.Event()  # Ctrl-C / SIGTERM: finish the current window (or the files started), then stop
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if window is None:
        emit = results.write if results is not None else lambda line: click.echo(json_line(line))
        try:
            failed = recognize_files(recognizer, sources, emit, workers, stop)
        finally:
            recognizer.close()
            if results is not None:
                results.close()
        if results is not None:
            click.echo(f"wrote {out}: {len(sources)} files, {failed} error(s)", err=True)
        if failed:
            raise SystemExit(1)
        return
    failed = 0
    for name, missing in sources:
        source = name if is_live(name) else Path(name)
        results_kept: list = []  # kept only for --plot and the summary's latencies: bounded per source
        summary = StreamSummary(name)
        try:
            if missing:
                raise AvemoError(missing)
            if is_live(name):
                click.echo(f"{name}: reading (windows of {window:g} s; Ctrl-C stops)", err=True)
            for result in recognizer.stream(
                source, window, hop, timeout=timeout, max_seconds=max_seconds, stop=stop, reconnect=reconnect
            ):
                if (result.dropped_windows or 0) > summary.dropped:
                    click.echo(
                        f"WARNING: {name}: processing fell {result.behind_s:g} s behind the stream; "
                        f"{result.dropped_windows - summary.dropped} window(s) skipped",
                        err=True,
                    )
                summary.add(result)
                if plot:
                    results_kept.append(result)
                click.echo(json_line(result_line(result)), nl=True)
        except AvemoError as exc:  # the lines already written stand
            failed += 1
            summary.error = str(exc)
            click.echo(json_line({"source": name, "error": str(exc)}))
        summary.stopped = stop.is_set()
        click.echo(json_line({"summary": summary.to_json()}), err=True)
        if plot and results_kept:
            target = plot if len(sources) == 1 else plot.with_name(f"{plot.stem}-{Path(name).stem}{plot.suffix}")
            plot_timeline(results_kept, target, title=Path(name).name)
        if stop.is_set():
            break
    recognizer.close()  # TensorRT engines before their CUDA context
    if in_ffmpeg():  # Ctrl-C while FFmpeg opened or read a silent stream: finalising under it would crash
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if failed else 0)
    if failed:
        raise SystemExit(1)


def json_line(obj: object) -> str:
    """JSON of ``obj`` with file names that are not UTF-8 shown as \\xNN escapes, not lone surrogates
    (which strict JSON readers refuse)."""

    def clean(value: object) -> object:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        return [clean(v) for v in value] if isinstance(value, list) else value

    return json.dumps(clean(obj))


class StreamSummary:
    """What a windowed run did, for the summary line on stderr."""

    def __init__(self, source: str) -> None:
        self.source, self.windows, self.dropped, self.end = source, 0, 0, 0.0
        self.latencies: list[float] = []
        self.error: str | None = None
        self.stopped = False

    def add(self, result: object) -> None:
        self.windows += 1
        self.end = getattr(result, "end", 0.0) or 0.0
        self.dropped = getattr(result, "dropped_windows", 0) or 0
        latency = getattr(result, "latency_ms", None)
        if latency is not None:
            self.latencies.append(latency)

    def to_json(self) -> dict:
        import numpy as np

        out: dict = {"source": self.source, "windows": self.windows, "dropped_windows": self.dropped}
        out["stream_seconds"] = self.end
        if self.latencies:
            out["latency_ms"] = {
                q: round(float(np.percentile(self.latencies, p)), 1) for q, p in (("p50", 50), ("p90", 90))
            }
        out["ended"] = "error" if self.error else "interrupted" if self.stopped else "end of stream or --max-seconds"
        return out


def plot_timeline(results: list, path: Path, title: str) -> None:
    """The six emotion probabilities over time (window centres)."""
    from avemo.contract import LABELS
    from avemo.deps import require

    matplotlib = require("matplotlib", "pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = [(r.start + r.end) / 2 for r in results]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for name in LABELS:
        ax.plot(centres, [r.probs[name] for r in results], marker="o", label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), title=title)
    ax.legend(ncol=6, fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def engine_build_options(command: click.Command) -> click.Command:
    """--workspace, --timing-cache, --device and --max-batch: every command that builds engines takes them."""
    for option in reversed(
        (
            click.option("--workspace", type=int, default=1024, show_default=True, help="Builder workspace in MB."),
            click.option(
                "--timing-cache",
                type=click.Path(path_type=Path, dir_okay=False),
                default=None,
                help="Timing cache file, read if present and written after the build.",
            ),
            click.option(
                "--device", "device_id", type=int, default=0, show_default=True, help="CUDA device to build on."
            ),
            click.option(
                "--max-batch",
                type=click.IntRange(min=1),
                default=None,
                help="Clips per call (default: 4 on a shared-memory GPU of 8 GiB or less, e.g. an Orin Nano; else 16).",
            ),
        )
    ):
        command = option(command)
    return command


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True)
@engine_build_options
def build(
    models: Path, precision: str, workspace: int, timing_cache: Path | None, device_id: int, max_batch: int | None
) -> None:
    """Build TensorRT engines for every graph of an exported model, on the device that will run them.

    Engines go to MODELS/engines/<gpu>-sm<cc>-trt<version>/ with a JSON beside
    each; an engine built for another GPU or TensorRT version, or from graphs
    or weights that changed since, is refused at load. Every network is
    strongly typed: fp16 builds from the fp16/ mixed-precision graphs (its fp32
    parts stay fp32), int8 from int8/ (Q/DQ), fp32 with TF32 off. Each engine
    runs parity.npz's samples before it is installed; one beyond the
    precision's tolerance is not installed.

    \b
    Examples:
      avemo build models/ --precision fp16 --timing-cache trt.cache
      avemo build models/ --precision fp16 --device 1          # the second GPU
    """
    from avemo.runtime.backends.build import build_engines
    from avemo.runtime.models.manifest import load_manifest

    build_engines(load_manifest(models), precision, workspace, timing_cache, device_id, max_batch, click.echo)


def _list(kind: type, choices: tuple[str, ...] | None = None):
    """A click callback parsing 'a,b,c' (or 'all') into a list."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list:
        if choices and value == "all":
            return list(choices)
        try:
            items = [kind(v) for v in value.split(",") if v]
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected comma-separated {kind.__name__} values") from None
        bad = [v for v in items if choices and v not in choices]
        if bad or not items:
            raise click.BadParameter(f"{value!r}: choose from {', '.join(choices or ())} or all")
        return items

    return parse


def _choices_option(flag: str, dest: str, default: str, choices: tuple[str, ...], what: str):
    """A comma-separated multiple choice ('all' for every one)."""
    listed = f"{what}: {', '.join(choices)} (comma-separated) or all."
    return click.option(flag, dest, default=default, show_default=True, callback=_list(str, choices), help=listed)


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@_choices_option(
    "--backend", "backends", "torch,ort", ("torch", "ort", "trt"), "Backends (torch = PyTorch eager, the baseline)"
)
@_choices_option("--precision", "precisions", "fp32", tuple(PRECISION_DIRS), "Graph sets")
@_choices_option("--graph", "graphs", "av", MODALITIES, "Graphs")
@click.option("--batch", "batches", default="1,4,16", show_default=True, callback=_list(int), help="Clips per call.")
@click.option("--seconds", default="2,5,10,30", show_default=True, callback=_list(float), help="Clip lengths.")
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
    checkpoint: Path | None, media: Path | None, no_rss: bool, no_flops: bool, out: Path, baseline: object = None,
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


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Default: MODELS.")
@click.option(
    "--precision",
    "precisions",
    default="fp16",
    show_default=True,
    callback=_list(str, ("fp32", "fp16", "int8")),
    help="Engine precisions to build and check (comma-separated, or all).",
)
@click.option("--device", "device_id", type=int, default=0, show_default=True, help="CUDA device index.")
@click.option("--iters", type=int, default=30, show_default=True, help="Timed calls per engine and for ONNX Runtime.")
def doctor(models: Path, out: Path | None, precisions: list[str], device_id: int, iters: int) -> None:
    """First thing to run on a new device: environment, parity, engines, latency, memory.

    Reports the GPU, compute capability, driver, CUDA, TensorRT, pycuda,
    JetPack and power mode; checks the model files and their ONNX Runtime
    parity; builds the TensorRT engines that are missing, runs parity through
    each, times each against ONNX Runtime on the same 5-s clip (interleaved)
    and reports device memory. Writes doctor.json and doctor.md. Exit code 1
    on any failure (each named); without a GPU it says what it could not check
    and exits 0 after the ONNX checks.

    \b
    Examples:
      avemo doctor models/
      avemo doctor models/ --precision fp16,int8 --device 1 --out doctor-orin/
    """
    from avemo.runtime.doctor import run_doctor

    report = run_doctor(models, out, tuple(precisions), device_id, iters, log=click.echo)
    click.echo(f"wrote {(out or models) / 'doctor.json'} and doctor.md: {report['failures']} failure(s)")
    if report["failures"]:
        raise SystemExit(1)
