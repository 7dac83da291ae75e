"""Load and faults against a local Triton server (loopback only, bounded in count and time).

    .venv/bin/avemo sample /tmp/clip10.mp4 --seconds 10
    .venv/bin/python scripts/bench_triton.py demo_out/models /tmp/clip10.mp4 --out docs/bench/triton.json

Exports the models as a `--backend python` repository, starts `tritonserver` (the nvidia-pytriton
wheel), then for 1, 4 and 16 concurrent gRPC clients sends requests for a fixed time (or count):
10 s of audio features to avemo_a ("features") and the clip's bytes to avemo_media ("media").
Prints requests/s, p50/p99 latency and errors per case. Faults: the server is stopped (SIGINT)
while 4 clients send; the script reports what the clients saw (errors, the longest wait) and
that a restarted server on the same port answers again (each client stops at its first error).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avemo.machine import describe
from avemo.runtime.manifest import load_manifest
from avemo.runtime.parity import sample_inputs
from avemo.runtime.serving.client import AvemoTritonClient
from avemo.runtime.serving.repository import export_triton
from avemo.runtime.serving.server import TritonServer, free_port


def load(
    url: str,
    send: Callable[[AvemoTritonClient], Any],
    clients: int,
    seconds: float,
    limit: int,
    stop_on_error: bool = False,
) -> dict:
    """``clients`` threads, each with its own connection, sending until ``seconds`` or ``limit`` requests in
    all (or, with ``stop_on_error``, until its first error, as a client that reports failures would)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        client = AvemoTritonClient(url, timeout=30)
        while time.monotonic() < stop_at:
            with lock:
                if len(latencies) + len(errors) >= limit:
                    break
            start = time.perf_counter()
            try:
                send(client)
                with lock:
                    latencies.append(time.perf_counter() - start)
            except Exception as exc:  # counted, reported by kind
                with lock:
                    errors.append(type(exc).__name__ + ": " + str(exc).splitlines()[0][:120])
                if stop_on_error:
                    break
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    ms = sorted(1000 * x for x in latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(ms) if ms else None,
        "p99_ms": float(np.percentile(ms, 99)) if ms else None,
    }


def faults(repo: Path, port: int, send: Callable[[AvemoTritonClient], Any]) -> dict:
    """Stop the server under load; then start it again on the same port and ask once more."""
    server = TritonServer(repo, grpc_port=port).start()
    outcome: dict[str, Any] = {}
    result: dict[str, Any] = {}

    def under_load() -> None:
        result.update(load(server.url, send, clients=4, seconds=30.0, limit=100_000, stop_on_error=True))

    runner = threading.Thread(target=under_load)
    runner.start()
    time.sleep(1.5)
    stopped_at = time.perf_counter()
    outcome["server_exit_code"] = server.stop()
    outcome["server_stop_s"] = time.perf_counter() - stopped_at
    runner.join(60)
    outcome["clients_finished"] = not runner.is_alive()
    outcome["clients_done_after_stop_s"] = time.perf_counter() - stopped_at
    outcome["during_load"] = result
    server.close()
    restarted = TritonServer(repo, grpc_port=port).start()
    try:
        client = AvemoTritonClient(restarted.url)
        send(client)
        outcome["restarted_server_answers"] = True
        client.close()
    finally:
        restarted.close()
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("media", type=Path)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="Per case.")
    parser.add_argument("--limit", type=int, default=400, help="Requests per case at most.")
    parser.add_argument("--instances", type=int, default=1, help="Instances per Triton model.")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args()

    features = load_manifest(args.models).features
    audio = sample_inputs(features, "a", 1, 10.0, seed=0)
    clip = args.media.read_bytes()
    cases = {
        "features (avemo_a, 10 s)": lambda c: c.graph("a", audio),
        f"media (avemo_media, {args.media.name})": lambda c: c.media(clip),
    }
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "repo"
        export_triton(args.models, repo, backend="python", instances=args.instances)
        port = free_port()
        results: dict[str, Any] = {"machine": describe(), "instances": args.instances, "cases": []}
        with TritonServer(repo, grpc_port=port) as server:
            for name, send in cases.items():
                send(AvemoTritonClient(server.url))  # warm-up
                for clients in args.clients:
                    row = {"case": name, **load(server.url, send, clients, args.seconds, args.limit)}
                    results["cases"].append(row)
                    print(
                        f"{name}: {clients} clients: {row['requests_per_s']:.1f} req/s, p50 {row['p50_ms']:.0f} ms, "
                        f"p99 {row['p99_ms']:.0f} ms, {row['errors']} errors",
                        flush=True,
                    )
        results["faults"] = faults(repo, port, cases["features (avemo_a, 10 s)"])
    during = results["faults"]["during_load"]
    print(
        f"server stopped under load: exit code {results['faults']['server_exit_code']} after "
        f"{results['faults']['server_stop_s']:.1f} s, clients done "
        f"{results['faults']['clients_done_after_stop_s']:.1f} s later ({during['requests']} answered, "
        f"{during['errors']} errors: {during['error_kinds']}); restarted server answers: "
        f"{results['faults']['restarted_server_answers']}"
    )
    print(f"\nMachine: {describe()}\n")
    print("| case | clients | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for row in results["cases"]:
        print(
            f"| {row['case']} | {row['clients']} | {row['requests_per_s']:.1f} | {row['p50_ms']:.0f} "
            f"| {row['p99_ms']:.0f} | {row['errors']} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
