"""Runtime-side CLI commands (torch-free): verify, infer, build, doctor.

Click wiring only: the work is in ``avemo.runtime`` (the Recognizer, ``batch`` for files,
``stream.loop`` for windows, ``backends`` for engines, ``doctor``); ``avemo profile`` is in
``avemo.runtime.profile.cli``.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import click

from avemo.contract import BACKENDS, ENGINE_PRECISIONS, ORT_PROVIDERS, PARITY_FILE, PRECISIONS, graph_file
from avemo.options import comma_list, cores, engine_build_options, face_options, hop_step, positive


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
    from avemo.runtime.backends.parity import check_parity, load_references, parity_samples
    from avemo.runtime.models.manifest import load_manifest

    manifest = load_manifest(models, verify=True)
    click.echo(f"{models}: {len(manifest.files)} files match manifest.json")
    click.echo(
        "| precision | graph | runner | max abs diff | tolerance | padded vs alone | label agreement |\n"
        "|---|---|---|---|---|---|---|"
    )
    samples = parity_samples(manifest.features, manifest.modalities, manifest.faces_dtype)
    references = load_references(models / PARITY_FILE)
    for precision, folder in manifest.graph_sets():
        report = check_parity(models / folder, samples, references, precision, threads)
        tol = manifest.tolerance(precision)
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
    type=click.Choice(PRECISIONS),
    default=None,
    help="Default: fp32 on ONNX Runtime; on TensorRT the engines built for this GPU (fp16, else int8, else fp32).",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
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
    from avemo.runtime.stream.live import in_ffmpeg
    from avemo.runtime.stream.loop import print_windows

    _check_infer_options(window, out, plot, backend, ort_provider)
    sources, results = _pending_sources(_with_devices(media, camera, mic), window, out, retry_errors)
    recognizer = _open_recognizer(
        models, precision, threads, face_detector, threshold, ort_provider, backend, faces, device_id
    )  # fmt: skip
    stop = _stop_on_signals()
    if window is None:
        failed = _infer_files(recognizer, sources, results, workers, stop)
    else:
        windows = dict(timeout=timeout, max_seconds=max_seconds, stop=stop, reconnect=reconnect)
        failed = print_windows(
            sources, lambda source: recognizer.stream(source, window, hop, **windows), window, stop, click.echo, plot
        )
        recognizer.close()  # TensorRT engines before their CUDA context
        if in_ffmpeg():  # Ctrl-C while FFmpeg opened or read a silent stream: finalising under it would crash
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1 if failed else 0)
    if failed:
        raise SystemExit(1)


def _check_infer_options(
    window: float | None, out: Path | None, plot: Path | None, backend: str, ort_provider: str
) -> None:
    """Refuse option combinations that cannot work, before any work."""
    if plot:  # the runtime install has no matplotlib
        from avemo.deps import require

        require("matplotlib", "pip install matplotlib")
    if plot and not window:
        raise click.BadParameter("--plot draws a timeline: give --window too", param_hint="--plot")
    if out and window:
        raise click.BadParameter("--out resumes whole files; with --window redirect stdout", param_hint="--out")
    if ort_provider != "cpu" and backend == "trt":
        raise click.BadParameter("is for --backend ort (or auto)", param_hint="--ort-provider")


def _with_devices(media: tuple[str, ...], camera: str | None, mic: str | None) -> tuple[str, ...]:
    """MEDIA, and --camera/--mic as one more live source (``camera:SPEC+FORMAT:DEVICE``)."""
    if camera is not None or mic is not None:
        device = "+".join(filter(None, [f"camera:{camera}" if camera is not None else None, mic]))
        media = (*media, device)
    if not media:
        raise click.UsageError("give MEDIA (files, folders, globs, @list.txt or stream URLs), --camera or --mic")
    return media


def _pending_sources(
    media: tuple[str, ...], window: float | None, out: Path | None, retry_errors: bool
) -> tuple[list[tuple[str, str | None]], Any]:
    """(source, error) of each file or stream named, less those --out already holds; and that ResultsFile."""
    from avemo.runtime.batch import ResultsFile, expand_media
    from avemo.runtime.stream.live import is_live

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
    return sources, results


def _open_recognizer(
    models: Path, precision: str | None, threads: int | None, face_detector: str | None, threshold: float,
    ort_provider: str, backend: str, faces: str, device_id: int,
) -> Any:  # fmt: skip
    """The Recognizer (an ONNX Runtime provider other than the CPU's means --backend ort); stderr says which."""
    from avemo.runtime.backends.ort import providers_for
    from avemo.runtime.recognizer import Recognizer

    recognizer = Recognizer(
        models, precision, threads, face_detector, threshold, providers_for(ort_provider),
        "ort" if ort_provider != "cpu" else backend, faces, device_id,
    )  # fmt: skip
    click.echo(f"backend: {recognizer.backend_reason}", err=True)
    return recognizer


def _stop_on_signals() -> threading.Event:
    """An event Ctrl-C and SIGTERM set: the current window (or the files started) finish, then the run stops."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _infer_files(
    recognizer: Any, sources: list[tuple[str, str | None]], results: Any, workers: int, stop: threading.Event
) -> int:
    """Whole files, a line each (on stdout, or to the --out ResultsFile ``results``); the number failed."""
    from avemo.runtime.batch import json_line, recognize_files

    emit = results.write if results is not None else lambda line: click.echo(json_line(line))
    try:
        failed = recognize_files(recognizer, sources, emit, workers, stop)
    finally:
        recognizer.close()
        if results is not None:
            results.close()
    if results is not None:
        click.echo(f"wrote {results.path}: {len(sources)} files, {failed} error(s)", err=True)
    return failed


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--precision", type=click.Choice(ENGINE_PRECISIONS), default="fp16", show_default=True)
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


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Default: MODELS.")
@click.option(
    "--precision",
    "precisions",
    default="fp16",
    show_default=True,
    callback=comma_list(str, ENGINE_PRECISIONS),
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
