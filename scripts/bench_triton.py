"""Load and faults against a local Triton server (loopback only, bounded in count and time).

    .venv/bin/avemo sample /tmp/clip10.mp4 --seconds 10
    .venv/bin/python scripts/bench_triton.py demo_out/models /tmp/clip10.mp4 --out docs/bench/triton.json
    .venv/bin/python scripts/bench_triton.py demo_out/models /tmp/clip10.mp4 --clients 1 4 \
        --media-instances 1 0 --rounds 2 --cycles 2 --seconds 5

Exports the models as a `--backend python` repository, starts `tritonserver` (the nvidia-pytriton
wheel), then for 1, 4 and 16 concurrent gRPC clients sends requests for a fixed time (or count):
10 s of audio features to avemo_a ("features") and the clip's bytes to avemo_media ("media").
Prints requests/s, p50/p99 latency and errors per case; the media cases run once per
--media-instances value (a server each), in --rounds, so that ratios compare runs minutes apart on
a shared machine. Operator checks: after 20 feature and 3 media requests, 3 requests with NaN
features are sent; the script prints their status codes, what the Prometheus counters counted and the
tracebacks in the server's log. Faults: the server is stopped (SIGINT)
while 4 clients send; the script reports what the clients saw (errors, the longest wait) and
that a restarted server on the same port answers again (each client stops at its first error).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avemo.machine import describe
from avemo.runtime.backends.parity import sample_inputs
from avemo.runtime.models.manifest import load_manifest
from avemo.runtime.serving.client import AvemoTritonClient
from avemo.runtime.serving.repository import export_triton
from avemo.runtime.serving.server import TritonServer, free_port, stubs_of


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


def model_rss(server: TritonServer) -> dict[str, list[int]]:
    """{model: [resident MB of each of its Python processes]} (Linux /proc)."""
    rss: dict[str, list[int]] = {}
    for pid, model in sorted(stubs_of(server.process.pid).items()):
        status = Path(f"/proc/{pid}/status").read_text()
        kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        rss.setdefault(model, []).append(kb // 1024)
    return rss


def operator_checks(server: TritonServer, client: AvemoTritonClient, audio: dict[str, np.ndarray]) -> dict:
    """What an operator sees: 3 rejected requests (NaN features) in the counters, /metrics, the log."""
    from tritonclient.utils import InferenceServerException

    def metrics() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
        wanted = ('avemo_request_failure{code="INVALID_ARG",model="avemo_a"}', "nv_inference_request_failure{")
        values: dict[str, float] = {}
        for line in lines:
            if line.startswith(wanted) and 'model="avemo_a"' in line:
                key = line.split("{")[0]
                values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return values

    before = metrics()
    bad = {**audio, "audio_feats": np.full_like(audio["audio_feats"], np.nan)}
    refused = []
    for _ in range(3):
        try:
            client.graph("a", bad)
        except InferenceServerException as exc:
            refused.append(exc.status())
    after = metrics()
    log = server.log_file.read_text(errors="replace")
    return {
        "rejected": refused,
        "counted": {key: after[key] - before.get(key, 0.0) for key in after},
        "log_tracebacks": log.count("Traceback"),
        "log_bytes": len(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("media", type=Path)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="Per case.")
    parser.add_argument("--limit", type=int, default=400, help="Requests per case at most.")
    parser.add_argument("--instances", type=int, default=1, help="Instances per graph model.")
    parser.add_argument(
        "--media-instances",
        type=int,
        nargs="+",
        default=[0],
        help="avemo_media instances, one server per value, in turn (0: one per core, export-triton's default).",
    )
    parser.add_argument("--rounds", type=int, default=1, help="Repeat the media cases, interleaving the values.")
    parser.add_argument("--cycles", type=int, default=1, help="Media: cycle through --clients this often per server.")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args()

    features = load_manifest(args.models).features
    audio = sample_inputs(features, "a", 1, 10.0, seed=0)
    clip = args.media.read_bytes()
    features_case, media_case = "features (avemo_a, 10 s)", f"media (avemo_media, {args.media.name})"
    cases = {features_case: lambda c: c.graph("a", audio), media_case: lambda c: c.media(clip)}
    results: dict[str, Any] = {"machine": describe(), "instances": args.instances, "cases": []}

    def run(server: TritonServer, name: str, media_instances: int, round_: int, cycles: int = 1) -> None:
        cases[name](AvemoTritonClient(server.url))  # warm-up
        for clients in args.clients * cycles:  # 1, 4, 1, 4, ...: neighbours in time share the machine's load
            row = {"case": name, "media_instances": media_instances, "round": round_, "load": os.getloadavg()[0]}
            row.update(load(server.url, cases[name], clients, args.seconds, args.limit))
            row["model_rss_mb"] = model_rss(server)
            results["cases"].append(row)
            print(
                f"{name} [media instances {media_instances}, round {round_}]: {clients} clients: "
                f"{row['requests_per_s']:.1f} req/s, p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
                f"{row['errors']} errors; model processes' RSS (MB): {row['model_rss_mb']}",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as scratch:
        repos = {}
        for count in args.media_instances:
            repos[count] = Path(scratch) / f"repo-{count}"
            export_triton(args.models, repos[count], "python", instances=args.instances, media_instances=count or None)
        port = free_port()
        first = args.media_instances[0]
        with TritonServer(repos[first], grpc_port=port, metrics_port=free_port()) as server:
            run(server, features_case, first, 0)
            client = AvemoTritonClient(server.url)
            for _ in range(20):
                client.graph("a", audio)
            for _ in range(3):
                client.media(clip)
            results["operator"] = operator_checks(server, client, audio)
        for round_ in range(args.rounds):
            for count in args.media_instances:
                with TritonServer(repos[count], grpc_port=port) as server:
                    run(server, media_case, count, round_, args.cycles)
        results["faults"] = faults(repos[first], port, cases[features_case])
    report(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def report(results: dict) -> None:
    during, faulted, operator = results["faults"]["during_load"], results["faults"], results["operator"]
    print(
        f"server stopped under load: exit code {faulted['server_exit_code']} after {faulted['server_stop_s']:.1f} s, "
        f"clients done {faulted['clients_done_after_stop_s']:.1f} s later ({during['requests']} answered, "
        f"{during['errors']} errors: {during['error_kinds']}); restarted server answers: "
        f"{faulted['restarted_server_answers']}"
    )
    print(
        f"operator: 3 NaN requests -> {operator['rejected']}; counted {operator['counted']}; "
        f"log after the load: {operator['log_tracebacks']} tracebacks, {operator['log_bytes']} bytes"
    )
    print(f"\nMachine: {describe()}\n")
    print("| case | media instances | round | clients | req/s | p50 ms | p99 ms | errors | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results["cases"]:
        print(
            f"| {row['case']} | {row['media_instances']} | {row['round']} | {row['clients']} "
            f"| {row['requests_per_s']:.1f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['errors']} "
            f"| {row['load']:.1f} |"
        )
    # media: the runs of one (instances, clients) pooled; and each run against the last one with fewest clients
    media = [r for r in results["cases"] if r["case"].startswith("media")]
    for count in dict.fromkeys(r["media_instances"] for r in media):
        runs = [r for r in media if r["media_instances"] == count]
        fewest = min(r["clients"] for r in runs)
        pooled, pairs = {}, {}
        baseline = None
        for row in runs:
            totals = pooled.setdefault(row["clients"], [0, 0.0])
            totals[0] += row["requests"]
            totals[1] += row["seconds"]
            if row["clients"] == fewest:
                baseline = row
            elif baseline is not None:
                pairs.setdefault(row["clients"], []).append(row["requests_per_s"] / baseline["requests_per_s"])
        rate = {clients: requests / seconds for clients, (requests, seconds) in pooled.items()}
        for clients, ratios in pairs.items():
            print(
                f"media instances {count}: {clients} clients: {rate[clients]:.1f} clips/s pooled, "
                f"{rate[clients] / rate[fewest]:.2f}x {fewest} client(s) ({rate[fewest]:.1f}); run by run "
                f"{min(ratios):.2f}-{max(ratios):.2f}x ({len(ratios)} runs)"
            )


if __name__ == "__main__":
    main()
