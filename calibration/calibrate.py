"""`avemo calibrate`: INT8 graphs for a model directory, calibrated on MOSEI training features.

Writes ``int8/`` (ModelOpt explicit Q/DQ: what TensorRT builds as INT8, also
runnable in ONNX Runtime), optionally ``int8-cpu/`` (ONNX Runtime's own
quantizer, shipped only when measured faster than fp32 on this CPU within the
accuracy limit), ``int8/calibration.json`` (clip ids, settings, every scale)
and ``int8/accuracy.{md,json}``; then adds them to manifest.json.
Everything is checked before any work and staged, so a failure changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from avemo.calibration.data import batches, select_clips, usable
from avemo.calibration.quantize import (
    CPU_METHOD,
    UNQUANTIZED_OPS,
    QuantJob,
    keep_nodes,
    quantized_nodes,
    run_isolated,
    scales,
)
from avemo.calibration.report import (
    MAX_MF1_DROP,
    accuracy_report,
    meets_target,
    mf1_drop,
    report_markdown,
    target_graph,
)
from avemo.calibration.search import Trial, budget_error, layer_keys, quantized_layers, search
from avemo.contract import (
    MANIFEST_FILE,
    MODALITY_TITLES,
    PARITY_FILE,
    PRECISION_DIRS,
    TENSORRT_DIRS,
    WEIGHTS_FILE,
    graph_file,
)
from avemo.errors import AvemoError
from avemo.export.fp16 import FP32_OPS
from avemo.export.weights import share_weights
from avemo.io import atomic_write_bytes, atomic_write_json, install_tree, jsonable, new_tree, tree_hashes
from avemo.machine import package_version
from avemo.runtime.backends.ort import OrtBackend
from avemo.runtime.models.manifest import load_manifest
from avemo.runtime.models.parity import TOLERANCE, check_parity, load_references, parity_samples, sample_inputs
from avemo.runtime.profile.flops import node_flops
from avemo.runtime.profile.timing import interleaved_latency, summarize
from avemo.train.cache import CacheSplit
from avemo.train.metrics import emotion_f1

CALIBRATION_FILE = "calibration.json"
REPORT_FILE = "accuracy"  # .md and .json
INT8_DIRS = (PRECISION_DIRS["int8"], PRECISION_DIRS["int8-cpu"])
SEARCH_DIR = ".search"  # inside the staging folder: one quantized set per search round
FLOPS_SECONDS = 10.0  # clip length the FLOPs shares are counted at (as the latency clip)


def calibrate(
    models: Path,
    data: Path,
    split: str = "train",
    samples: int = 128,
    method: str = "entropy",
    seed: int = 0,
    default_keep: bool = True,
    keep: tuple[str, ...] = (),
    clips_from: Path | None = None,
    cpu_int8: str = "auto",
    report_splits: tuple[str, ...] = ("valid", "test"),
    threads: int | None = None,
    latency_seconds: float = 10.0,
    latency_rounds: int = 5,
    log: Any = print,
    max_drop: float | None = None,
    accept_miss: bool = False,
) -> dict[str, Any]:
    """Calibrate, check and add INT8 graphs to ``models``; returns the accuracy report.

    With ``max_drop`` the fewest most sensitive layers stay unquantized until the A+V mF1 drop on the
    decision split meets it (``search.py``); a budget met only with under half the layers int8 raises
    unless ``accept_miss``.
    """
    models = Path(models)
    # Every check before any work: hashes, cache features, splits, labels, patterns.
    manifest = load_manifest(models, verify=False)
    manifest.verify_hashes(skip_dirs=INT8_DIRS)  # the int8 sets are about to be replaced
    if split == "test" or split in report_splits:
        raise AvemoError(f"--split {split}: calibrate on training features, not on a split the report judges")
    calib_split = CacheSplit(data, split, manifest.features)
    eval_splits = {name: CacheSplit(data, name, manifest.features) for name in report_splits}
    clips = (
        _clips_from_file(clips_from, calib_split)
        if clips_from
        else select_clips(calib_split, samples, seed, need=_streams(manifest.modalities))
    )
    fp32_graphs = {m: manifest.graph_path(m, "fp32") for m in manifest.modalities}
    rule = default_keep and max_drop is None  # with a budget, measured sensitivity decides instead of the rule
    kept = {m: keep_nodes(onnx.load(str(p), load_external_data=False), rule, keep) for m, p in fp32_graphs.items()}
    decision_split = "valid" if "valid" in report_splits else report_splits[0]
    limit = MAX_MF1_DROP if max_drop is None else max_drop
    log(
        f"calibrating {', '.join(m.upper() for m in manifest.modalities)} on {len(clips)} {split} clips "
        f"({method}); kept in fp32: {sum(len(k) for k in kept.values())} nodes + {', '.join(UNQUANTIZED_OPS)}"
    )

    started = time.perf_counter()
    staging = new_tree(models)  # the whole model folder with the new int8 sets, swapped in once complete
    try:
        candidates = {"int8": "modelopt"} if cpu_int8 == "never" else {"int8": "modelopt", "int8-cpu": "ort"}
        scale_record: dict[str, Any] = {}
        search = None
        if max_drop is not None:
            int8_job = QuantJob(fp32_graphs, {}, Path(data), split, tuple(clips), method, "modelopt", _fp16_dir("int8"))
            search, scale_record["int8"] = _search_int8(
                int8_job, kept, eval_splits[decision_split], manifest, staging, max_drop, threads, log
            )
            if not search["met"] and not accept_miss:
                raise budget_error(search)
        for precision, tool in tqdm(candidates.items(), desc="quantize", unit="set"):
            if precision in scale_record:
                continue  # the search's last set
            kept_names = {m: tuple(k) for m, k in kept.items()}
            fp16_dir = _fp16_dir(precision) if tool == "modelopt" else None
            job = QuantJob(fp32_graphs, kept_names, Path(data), split, tuple(clips), method, tool, fp16_dir)
            scale_record[precision] = _quantize_set(job, staging / PRECISION_DIRS[precision])

        graph_dirs = {"fp32": models, **({"fp16": models / "fp16"} if "fp16" in manifest.precisions else {})}
        graph_dirs.update({p: staging / PRECISION_DIRS[p] for p in candidates})
        report = accuracy_report(graph_dirs, eval_splits, manifest.modalities, threads)
        first_set = search.pop("first_folder") if search else None
        if search and search["kept"]:  # what keeping them costs in time, beside the fully int8 set
            graph_dirs["int8 (all layers)"] = first_set
        latency = _cpu_latency(manifest, graph_dirs, [n for n in graph_dirs if n.startswith("int8")],
                               latency_seconds, latency_rounds, threads)  # fmt: skip
        ship = _decide(report, latency, decision_split, cpu_int8, limit, log)
        if "int8-cpu" in candidates and not ship:
            shutil.rmtree(staging / PRECISION_DIRS["int8-cpu"])
        shipped = [p for p in candidates if p == "int8" or ship]

        samples_for_parity = parity_samples(manifest.features, manifest.modalities)
        references = load_references(models / PARITY_FILE)
        parity = {p: check_parity(staging / PRECISION_DIRS[p], samples_for_parity, references, p) for p in shipped}
        # TensorRT's graphs too, in the fp16-faithful reference evaluator: a conversion that broke them stops here.
        trt_parity = {
            p: check_parity(staging / TENSORRT_DIRS[p], samples_for_parity, references, p)
            for p in shipped
            if candidates[p] == "modelopt"
        }
        for p in shipped:
            _miss = "" if meets_target(report, p, decision_split, limit) else " (misses the accuracy target)"
            log(f"{p}: {_drop(report, p, decision_split)} on {decision_split}{_miss}")

        record = {
            "format": "avemo-calibration",
            "version": 1,
            "cache": str(data),
            "split": split,
            "seed": seed,
            "method": method,
            "cpu_method": CPU_METHOD if "int8-cpu" in shipped else None,
            "clips": [calib_split.ids[i] for i in clips],
            "kept_fp32": kept,
            "unquantized_ops": list(UNQUANTIZED_OPS),
            "scales": {p: scale_record[p] for p in shipped},
            "versions": _versions(),
        }
        int8_dir = staging / PRECISION_DIRS["int8"]
        atomic_write_json(int8_dir / CALIBRATION_FILE, jsonable(record))
        full_report = jsonable(
            {"target_mF1_drop": limit, "decision_split": decision_split, "accuracy": report, "latency": latency}
            | ({"search": search} if search else {})
        )
        atomic_write_json(int8_dir / f"{REPORT_FILE}.json", full_report)
        atomic_write_bytes(int8_dir / f"{REPORT_FILE}.md", report_markdown(report, latency, search, limit).encode())
        shutil.rmtree(staging / SEARCH_DIR, ignore_errors=True)  # the search's rounds are not shipped
        files = tree_hashes(staging)
        # The rest of the model comes along unchanged (an older calibration goes as a whole).
        shutil.copytree(models, staging, symlinks=True, dirs_exist_ok=True, ignore=_top_level(models, INT8_DIRS))
        data_out = _with_int8(manifest.data, files, candidates, method, kept, report, decision_split, limit, trt_parity)
        data_out.setdefault("parity", {}).update(parity)
        data_out["calibration"] = {"seconds": time.perf_counter() - started, "clips": len(clips), "shipped": shipped}
        install_tree(staging, models, MANIFEST_FILE, data_out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return full_report


def _top_level(root: Path, names: tuple[str, ...]) -> Any:
    """A copytree ``ignore`` that skips ``names`` (and the manifest) in ``root`` itself only."""
    return lambda folder, _: {*names, MANIFEST_FILE} if Path(folder) == root else set()


def _with_int8(
    data: dict[str, Any],
    files: dict[str, str],
    candidates: dict[str, str],
    method: str,
    kept: dict[str, list[str]],
    report: dict[str, Any],
    decision_split: str,
    limit: float,
    trt_parity: dict[str, Any],
) -> dict[str, Any]:
    """The manifest ``data`` with its int8 sets replaced by the shipped ones (``files``: their hashes);
    ``limit``: the mF1 drop they are judged against."""
    shipped = [p for p in candidates if any(f.split("/")[0] == PRECISION_DIRS[p] for f in files)]
    data_out = json.loads(json.dumps(data))  # a deep copy: the loaded manifest stays as it was
    data_out["files"] = {k: v for k, v in data_out["files"].items() if k.split("/")[0] not in INT8_DIRS} | files
    for p in INT8_DIRS:
        data_out["precisions"].pop(p, None)
    for p in shipped:
        data_out["precisions"][p] = {
            "dir": PRECISION_DIRS[p],
            "parity_tolerance": TOLERANCE[p],
            "quantizer": "nvidia-modelopt (explicit Q/DQ)" if candidates[p] == "modelopt" else "onnxruntime QDQ (u8s8)",
            "method": method if candidates[p] == "modelopt" else CPU_METHOD,
            "kept_fp32": kept,
            "unquantized_ops": list(UNQUANTIZED_OPS),
            "calibration": f"{PRECISION_DIRS['int8']}/{CALIBRATION_FILE}",
            "report": f"{PRECISION_DIRS['int8']}/{REPORT_FILE}.md",
            "meets_accuracy_target": meets_target(report, p, decision_split, limit),
        }
        if p in trt_parity:
            data_out["precisions"][p]["tensorrt_graphs"] = {
                "dir": TENSORRT_DIRS[p],
                "unquantized_in": "fp16",
                "fp32_ops": list(FP32_OPS),
                "parity": trt_parity[p],  # in ONNX's fp16-faithful reference evaluator
            }
    return data_out


def _streams(modalities: list[str]) -> str:
    """'av' when the model reads both streams, else 'a' or 'v': the clips calibration can use."""
    return "".join(s for s in "av" if any(s in m for m in modalities))


def _quantize_set(job: QuantJob, out: Path) -> dict[str, Any]:
    """Quantize every graph of ``job`` into ``out`` (and ``out/job.fp16_dir``), one shared weight file per
    folder; returns each graph's scales."""
    with tempfile.TemporaryDirectory() as tmp:
        sets = run_isolated(job, Path(tmp))
    for folder, graphs in sets.items():
        for modality, graph in graphs.items():
            count = quantized_nodes(graph)
            if not count or count != quantized_nodes(sets[""][modality]):
                where = folder or "."
                raise AvemoError(f"{job.sources[modality]}: the quantizer wrote {count} Q/DQ nodes into {where}")
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        share_weights(graphs, target / WEIGHTS_FILE)
        for modality, graph in graphs.items():
            onnx.save(graph, target / graph_file(modality))
            onnx.checker.check_model(str(target / graph_file(modality)))
    return {modality: scales(graph, out) for modality, graph in sets[""].items()}


def _fp16_dir(precision: str) -> str:
    """Where TensorRT's copy of a ModelOpt set goes, inside that set's folder."""
    return str(Path(TENSORRT_DIRS[precision]).relative_to(PRECISION_DIRS[precision]))


def _search_int8(
    job: QuantJob,
    kept: dict[str, dict[str, str]],
    split: CacheSplit,
    manifest: Any,
    staging: Path,
    max_drop: float,
    threads: int | None,
    log: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the sensitivity search (``search.py``) with ModelOpt and the decision split; the chosen set is left in
    ``staging/int8`` and its layers are added to ``kept``. Returns the search record and that set's scales."""
    target = "av" if "av" in manifest.modalities else manifest.modalities[0]
    by_key = {
        m: {key: node for node, key in layer_keys(onnx.load(str(p), load_external_data=False)).items()}
        for m, p in job.sources.items()
    }
    rounds = staging / SEARCH_DIR
    scales: dict[Path, dict[str, Any]] = {}

    def quantize(extra: set[str]) -> Path:
        nodes = {m: tuple(sorted({*kept[m], *(by_key[m][k] for k in extra if k in by_key[m])})) for m in job.sources}
        out = rounds / str(len(scales))
        scales[out] = _quantize_set(dataclasses.replace(job, keep=nodes), out)
        return out

    inputs = _DecisionInputs(split, target)

    def predict(path: Path) -> np.ndarray:
        backend = OrtBackend(path, threads=threads)
        return np.concatenate([backend.infer(batch) for batch in inputs])

    def mf1(probs: np.ndarray) -> float:
        return 100 * emotion_f1(labels, probs)["average"]["mF1"]

    reference = predict(job.sources[target])
    labels = split.labels[inputs.order]

    def judge(path: Path) -> Trial:
        probs = predict(path)
        return Trial(mf1(reference) - mf1(probs), float(np.abs(probs - reference).mean()))

    record = search(quantize, judge, graph_file(target), max_drop, log)
    folder = record.pop("folder")
    shutil.copytree(folder, staging / PRECISION_DIRS["int8"])
    record["first_folder"] = rounds / "0"
    for row in record["kept"]:
        for m in job.sources:
            if row["layer"] in by_key[m]:
                kept[m][by_key[m][row["layer"]]] = f"search: {row['error_gain']:.4f} error gain when unquantized"
    flops = node_flops(job.sources[target], sample_inputs(manifest.features, target, 1, FLOPS_SECONDS, seed=0))
    final = set(quantized_layers(onnx.load(str(folder / graph_file(target)), load_external_data=False)))
    total = sum(flops.values()) or 1.0
    for row in record["kept"]:
        row["flops_share"] = flops.get(row["node"], 0.0) / total
    record |= {
        "split": split.split,
        "graph": target,
        "flops_seconds": FLOPS_SECONDS,
        "unquantized_flops_share": sum(f for n, f in flops.items() if n not in final) / total,
    }
    log(
        f"search: {record['before']['drop']:+.2f} -> {record['after']['drop']:+.2f} points with "
        f"{len(record['kept'])} layers kept; {record['quantized_layers']}/{record['layers']} layers int8"
    )
    return record, scales[folder]


class _DecisionInputs:
    """The decision split's batches for the search's many judgements: decoded once while they fit in memory."""

    LIMIT = 1 << 30  # bytes; above it (a MOSEI-sized split) batches are decoded again for every judgement

    def __init__(self, split: CacheSplit, modality: str, batch_size: int = 16) -> None:
        self.split, self.modality, self.batch_size = split, modality, batch_size
        self.order: list[int] = []  # clip indices in batch order, known after the first pass
        self._kept: list[dict[str, np.ndarray]] | None = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[dict[str, np.ndarray]] | None = []
        self.order = []
        for chunk, batch in batches(self.split, usable(self.split, self.modality), self.modality, self.batch_size):
            self.order.extend(int(i) for i in chunk)
            if kept is not None:
                kept.append(batch)
                if sum(a.nbytes for b in kept for a in b.values()) > self.LIMIT:
                    kept = None
            yield batch
        self._kept = kept


def _clips_from_file(path: Path, split: CacheSplit) -> list[int]:
    """Clip ids from an earlier calibration.json (or a JSON list): the same sample, bit for bit."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AvemoError(f"{path}: unreadable clip list ({exc})") from None
    ids = raw.get("clips") if isinstance(raw, dict) else raw
    if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
        raise AvemoError(f"{path}: not a clip list (a JSON list of clip ids, or a calibration.json)")
    where = {clip_id: i for i, clip_id in enumerate(split.ids)}
    missing = [c for c in ids if c not in where]
    if missing:
        raise AvemoError(f"{path}: {len(missing)} clips are not in {split.root}/{split.split} (first: {missing[0]})")
    return sorted(where[c] for c in ids)


def _cpu_latency(
    manifest: Any,
    graph_dirs: dict[str, Path],
    candidates: dict[str, str],
    seconds: float,
    rounds: int,
    threads: int | None,
) -> dict[str, Any]:
    """p50/p90 of fp32 and each INT8 candidate on one clip, interleaved (this machine is noisy)."""
    modality = "av" if "av" in manifest.modalities else manifest.modalities[0]
    inputs = sample_inputs(manifest.features, modality, 1, seconds, seed=0)
    names = ["fp32", *candidates]
    runners = {n: OrtBackend(graph_dirs[n] / graph_file(modality), threads=threads) for n in names}
    iters = 10
    raw = interleaved_latency({n: (lambda b=b: b.infer(inputs)) for n, b in runners.items()}, iters, 3, rounds)
    return {
        "graph": modality,
        "seconds": seconds,
        "batch": 1,
        "threads": threads or os.cpu_count(),
        "rounds": rounds,
        "iters": iters,
        "results": {n: summarize(v) for n, v in raw.items()},
        "samples_ms": {n: v.round(4).tolist() for n, v in raw.items()},
    }


def _decide(report: dict[str, Any], latency: dict[str, Any], split: str, cpu_int8: str, limit: float, log: Any) -> bool:
    """Ship int8-cpu? Only when faster than fp32 (p50) and within the accuracy target, unless told."""
    if "int8-cpu" not in latency["results"]:
        return False
    speedup = latency["results"]["fp32"]["p50"] / latency["results"]["int8-cpu"]["p50"]
    accurate = meets_target(report, "int8-cpu", split, limit)
    verdict = speedup > 1.0 and accurate
    log(
        f"CPU int8 (ONNX Runtime QDQ): {speedup:.2f}x fp32 at p50, {_drop(report, 'int8-cpu', split)}: "
        + ("shipped as int8-cpu" if verdict or cpu_int8 == "always" else "not shipped; the CPU default stays fp32")
    )
    return cpu_int8 == "always" or (cpu_int8 == "auto" and verdict)


def _drop(report: dict[str, Any], precision: str, split: str) -> str:
    return f"{MODALITY_TITLES[target_graph(report)]} mF1 drop {mf1_drop(report, precision, split):+.2f} points"


def _versions() -> dict[str, str]:
    return {d: package_version(d) or "not installed" for d in ("nvidia-modelopt", "onnxruntime", "onnx", "numpy")}
