"""`avemo triton-serve`: a local Triton server on a repository written by `avemo export-triton`."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

DEAD_MODEL_EXIT = 3  # a model's process died: stopped for a supervisor to restart (1: bad input or start)


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
    container (see the README).

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
