"""`avemo export-triton` writes a Triton model repository from a models folder; `avemo triton-serve` serves one here."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from avemo.contract import BACKENDS, PRECISIONS
from avemo.runtime.serving.repository import TRITON_BACKENDS

DEAD_MODEL_EXIT = 3  # a model's process died: stopped for a supervisor to restart (1: bad input or start)


@click.command("export-triton")
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Repository to write.")
@click.option(
    "--backend",
    type=click.Choice(tuple(TRITON_BACKENDS)),
    default="onnxruntime",
    show_default=True,
    help="onnxruntime serves the ONNX graphs; tensorrt the engines built with `avemo build` on the serving GPU; "
    "python runs them through avemo's runtime and adds avemo_media (encoded clip in, emotions out).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
)
@click.option("--max-batch", type=click.IntRange(min=1), default=None, help="Default: the manifest's profile max.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Instances per model.")
@click.option(
    "--engines",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="tensorrt: the engines folder (MODELS/engines/<gpu>-sm<cc>-trt<version>) for the serving GPU.",
)
@click.option(
    "--python-env",
    default=None,
    help="python: the environment with avemo installed, for Triton's EXECUTION_ENV_PATH "
    "(default: this virtualenv; '' when avemo is installed in the Triton stub's own Python).",
)
@click.option(
    "--python-runtime",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="python: run the graphs on ONNX Runtime, TensorRT, or TensorRT where engines for the GPU exist.",
)
@click.option(
    "--media-instances",
    type=click.IntRange(min=1),
    default=None,
    help="python: avemo_media's processes, clips served in parallel (default: one per core of this machine; "
    "set it for the serving machine). Each holds the models and a face detector.",
)
@click.option(
    "--media-max-seconds",
    type=float,
    default=None,
    help="python: avemo_media refuses longer media (default 600; memory and time grow with the length).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace avemo models already in --out: each model folder is swapped whole (old or new, never half).",
)
def export_triton(
    models: Path, out: Path, backend: str, precision: str, max_batch: int | None, instances: int,
    engines: Path | None, python_env: str | None, python_runtime: str, media_instances: int | None,
    media_max_seconds: float | None, force: bool,
) -> None:  # fmt: skip
    """Write a Triton Inference Server model repository: avemo_a, avemo_v, avemo_av (+ avemo_media).

    Each model gets config.pbtxt (the manifest's names, dtypes and dims; dynamic
    batching; an instance group) and version 1/ with the graph (model.onnx and
    the shared avemo.weights beside it; copies, reflinked where the file system can), the
    TensorRT engine (model.plan), or, for --backend python, a model.py that
    runs the graph through avemo's runtime with the models folder beside it.

    \b
    Examples:
      avemo export-triton models/ --out triton-repo/
      avemo export-triton models/ --out triton-repo/ --backend tensorrt --precision fp16 --max-batch 16
      avemo export-triton models/ --out triton-repo/ --backend python && avemo triton-serve triton-repo/
      avemo export-triton models/ --out repo/ --backend python --media-instances 8 --media-max-seconds 120 --force
      docker run --rm -p8001:8001 -v $PWD/triton-repo:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
          tritonserver --model-repository=/models
    """
    from avemo.runtime.serving.repository import export_triton as run

    folders = run(
        models, out, backend, precision, max_batch, instances, engines, force, python_env, python_runtime,
        media_instances, media_max_seconds,
    )  # fmt: skip
    for folder in folders.values():
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        shown = [f for f in files if not f.startswith("1/models/")]
        hidden = len(files) - len(shown)
        click.echo(f"{folder}: {', '.join(shown)}" + (f" (+ {hidden} files in 1/models/)" if hidden else ""))


@click.command("triton-serve")
@click.argument("repository", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics (default: metrics off).",
)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Where to listen; 0.0.0.0 serves other machines too (no authentication: mind the network).",
)
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for the models.")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Server log.")
@click.option("--verbose", is_flag=True, help="Triton's verbose log.")
def triton_serve(
    repository: Path, grpc_port: int, http_port: int, metrics_port: int | None, address: str, timeout: float,
    log_file: Path | None, verbose: bool,
) -> None:  # fmt: skip
    """Serve a Triton model repository here until Ctrl-C, with the tritonserver of the nvidia-pytriton wheel.

    That wheel (Linux x86_64; `pip install --no-deps nvidia-pytriton==0.7.0`)
    has Triton's Python backend only: serve `avemo export-triton --backend
    python` repositories with it. The onnxruntime and tensorrt repositories,
    and any machine without the wheel (aarch64, Jetson), need NVIDIA's
    container (see docs/SERVING.md).

    It watches the models' Python processes: when one dies (killed for
    memory, crashed), Triton would go on reporting the model READY and fail
    every request to it, so triton-serve stops the server and exits with
    code 3, naming the model, for a supervisor (systemd, Kubernetes) to
    restart it. Killed in any way, it takes the server with it.

    \b
    Examples:
      avemo export-triton models/ --out repo/ --backend python
      avemo triton-serve repo/ --grpc-port 8001
      avemo triton-serve repo/ --metrics-port 8002     # elsewhere: curl -s localhost:8002/metrics
      docker run --rm -p8001:8001 -v $PWD/repo:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
          tritonserver --model-repository=/models
    """
    from avemo.runtime.serving.server import TritonServer

    server = TritonServer(repository, grpc_port, http_port, address, log_file, verbose, metrics_port)
    click.echo(f"starting tritonserver on {repository} (log: {server.log_file}) ...", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        models = server.models()
        metrics = f", metrics http://{address}:{metrics_port}/metrics" if metrics_port else ""
        click.echo(
            f"ready: gRPC {server.url}, HTTP {address}:{server.http_port}{metrics}; models: "
            + ", ".join(f"{name} ({state})" for name, state in sorted(models.items())),
            err=True,
        )
        while not stop.wait(0.5):
            if not server.running:
                raise server.failure(f"tritonserver stopped by itself (exit code {server.process.returncode})")
            if dead := server.dead_stubs():
                server.keep_log = True
                click.echo(
                    f"Error: {', '.join(dead)}: the model's Python process died "
                    f"(out of memory? see {server.log_file}); "
                    "Triton would fail every request to it: stopping the server for a supervisor to restart it",
                    err=True,
                )
                raise SystemExit(DEAD_MODEL_EXIT)
        click.echo("stopping ...", err=True)
    click.echo("stopped", err=True)
