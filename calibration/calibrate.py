"""`avemo calibrate`: INT8 graphs for a model directory, calibrated on MOSEI training features.

Writes ``int8/`` (ModelOpt explicit Q/DQ: what TensorRT builds as INT8, also
runnable in ONNX Runtime), optionally ``int8-cpu/`` (ONNX Runtime's own
quantizer, shipped only when measured faster than fp32 on this CPU within the
accuracy limit), ``int8/calibration.json`` (clip ids, settings, every scale)
and ``int8/accuracy.{md,json}``; then adds them to manifest.json.
Everything is checked before any work and staged, so a failure changes nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from tqdm import tqdm

from avemo.calibration.budget import SEARCH_DIR, search_int8
from avemo.calibration.data import clips_from_file, select_clips, streams
from avemo.calibration.quantize import CPU_METHOD, UNQUANTIZED_OPS, QuantJob, keep_nodes, quantize_set, tensorrt_subdir
from avemo.calibration.report import (
    MAX_MF1_DROP,
    accuracy_report,
    cpu_latency,
    meets_target,
    mf1_drop,
    report_markdown,
    target_graph,
)
from avemo.calibration.search import budget_error
from avemo.contract import (
    FACES_DTYPE,
    MANIFEST_FILE,
    MODALITY_TITLES,
    PARITY_FILE,
    PARITY_TOLERANCE,
    PRECISION_DIRS,
    TENSORRT_DIRS,
)
from avemo.errors import AvemoError
from avemo.export.fp16 import FP32_OPS
from avemo.io import atomic_write_bytes, atomic_write_json, jsonable, new_tree, replace_tree, tree_hashes
from avemo.machine import package_version
from avemo.runtime.backends.parity import check_parity, load_references, parity_samples
from avemo.runtime.models.manifest import Manifest, load_manifest, write_manifest
from avemo.train.cache import CacheSplit

CALIBRATION_FILE = "calibration.json"
REPORT_FILE = "accuracy"  # .md and .json
INT8_DIRS = (PRECISION_DIRS["int8"], PRECISION_DIRS["int8-cpu"])


@dataclass
class _Plan:
    """What a calibration reads and decides with, every part checked before any work."""

    models: Path
    manifest: Manifest
    data: Path
    split: str
    seed: int
    method: str
    calib_split: CacheSplit
    eval_splits: dict[str, CacheSplit]
    clips: list[int]
    fp32_graphs: dict[str, Path]
    kept: dict[str, dict[str, str]]  # modality -> node kept in fp32 -> why
    candidates: dict[str, str]  # precision -> quantizer
    decision_split: str
    limit: float  # the A+V mF1 drop the sets are judged against


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
    plan = _plan(Path(models), data, split, samples, method, seed, default_keep, keep, clips_from, cpu_int8,
                 report_splits, max_drop)  # fmt: skip
    log(
        f"calibrating {', '.join(m.upper() for m in plan.manifest.modalities)} on {len(plan.clips)} {split} clips "
        f"({method}); kept in fp32: {sum(len(k) for k in plan.kept.values())} nodes + {', '.join(UNQUANTIZED_OPS)}"
    )
    started = time.perf_counter()
    staging = new_tree(plan.models)  # the whole model folder with the new int8 sets, swapped in once complete
    try:
        scale_record, search_record = _quantize(plan, staging, max_drop, accept_miss, threads, log)
        report, latency = _measure(plan, staging, search_record, latency_seconds, latency_rounds, threads)
        ship = _decide(report, latency, plan.decision_split, cpu_int8, plan.limit, log)
        if "int8-cpu" in plan.candidates and not ship:
            shutil.rmtree(staging / PRECISION_DIRS["int8-cpu"])
        shipped = [p for p in plan.candidates if p == "int8" or ship]
        parity, trt_parity = _check_shipped(plan, staging, shipped, report, log)
        full_report = _write_records(plan, staging, shipped, scale_record, report, latency, search_record)
        _install(plan, staging, shipped, report, parity, trt_parity, started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return full_report


def _plan(
    models: Path,
    data: Path,
    split: str,
    samples: int,
    method: str,
    seed: int,
    default_keep: bool,
    keep: tuple[str, ...],
    clips_from: Path | None,
    cpu_int8: str,
    report_splits: tuple[str, ...],
    max_drop: float | None,
) -> _Plan:
    """Every check before any work: hashes, cache features, splits, labels, patterns; the clips and kept nodes."""
    manifest = load_manifest(models, verify=False)
    manifest.verify_hashes(skip_dirs=INT8_DIRS)  # the int8 sets are about to be replaced
    if manifest.faces_dtype != FACES_DTYPE:  # the calibration data feeds uint8 faces
        raise AvemoError(f"{models}: its graphs take {manifest.faces_dtype} faces; re-export it before calibrating")
    if split == "test" or split in report_splits:
        raise AvemoError(f"--split {split}: calibrate on training features, not on a split the report judges")
    calib_split = CacheSplit(data, split, manifest.features)
    eval_splits = {name: CacheSplit(data, name, manifest.features) for name in report_splits}
    clips = (
        clips_from_file(clips_from, calib_split)
        if clips_from
        else select_clips(calib_split, samples, seed, need=streams(manifest.modalities))
    )
    fp32_graphs = {m: manifest.graph_path(m, "fp32") for m in manifest.modalities}
    rule = default_keep and max_drop is None  # with a budget, measured sensitivity decides instead of the rule
    kept = {m: keep_nodes(onnx.load(str(p), load_external_data=False), rule, keep) for m, p in fp32_graphs.items()}
    return _Plan(
        models, manifest, data, split, seed, method, calib_split, eval_splits, clips, fp32_graphs, kept,
        candidates={"int8": "modelopt"} if cpu_int8 == "never" else {"int8": "modelopt", "int8-cpu": "ort"},
        decision_split="valid" if "valid" in report_splits else report_splits[0],
        limit=MAX_MF1_DROP if max_drop is None else max_drop,
    )  # fmt: skip


def _quantize(
    plan: _Plan, staging: Path, max_drop: float | None, accept_miss: bool, threads: int | None, log: Any
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every candidate set into ``staging``: with ``max_drop`` the searched int8 set first (its kept layers join
    ``plan.kept`` for the sets after it). Returns each set's scales and the search record (None without one)."""
    scale_record: dict[str, Any] = {}
    search_record = None
    if max_drop is not None:
        int8_job = QuantJob(plan.fp32_graphs, {}, Path(plan.data), plan.split, tuple(plan.clips), plan.method,
                            "modelopt", tensorrt_subdir("int8"))  # fmt: skip
        search_record, scale_record["int8"] = search_int8(
            int8_job, plan.kept, plan.eval_splits[plan.decision_split], plan.manifest, staging, max_drop, threads, log
        )
        if not search_record["met"] and not accept_miss:
            raise budget_error(search_record)
    for precision, tool in tqdm(plan.candidates.items(), desc="quantize", unit="set"):
        if precision in scale_record:
            continue  # the search's last set
        kept_names = {m: tuple(k) for m, k in plan.kept.items()}
        fp16_dir = tensorrt_subdir(precision) if tool == "modelopt" else None
        job = QuantJob(plan.fp32_graphs, kept_names, Path(plan.data), plan.split, tuple(plan.clips), plan.method,
                       tool, fp16_dir)  # fmt: skip
        scale_record[precision] = quantize_set(job, staging / PRECISION_DIRS[precision])
    return scale_record, search_record


def _measure(
    plan: _Plan, staging: Path, search_record: dict[str, Any] | None, seconds: float, rounds: int, threads: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The accuracy report of every graph set on the report splits, and the CPU latency of fp32 and the int8 sets."""
    graph_dirs = {"fp32": plan.models}
    if "fp16" in plan.manifest.precisions:
        graph_dirs["fp16"] = plan.models / "fp16"
    graph_dirs.update({p: staging / PRECISION_DIRS[p] for p in plan.candidates})
    report = accuracy_report(graph_dirs, plan.eval_splits, plan.manifest.modalities, threads)
    first_set = search_record.pop("first_folder") if search_record else None
    if search_record and search_record["kept"]:  # what keeping them costs in time, beside the fully int8 set
        graph_dirs["int8 (all layers)"] = first_set
    int8_sets = [n for n in graph_dirs if n.startswith("int8")]
    return report, cpu_latency(plan.manifest, graph_dirs, int8_sets, seconds, rounds, threads)


def _check_shipped(
    plan: _Plan, staging: Path, shipped: list[str], report: dict[str, Any], log: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parity of the shipped sets against the export's references: ONNX Runtime's graphs and TensorRT's."""
    samples_for_parity = parity_samples(plan.manifest.features, plan.manifest.modalities)
    references = load_references(plan.models / PARITY_FILE)
    parity = {p: check_parity(staging / PRECISION_DIRS[p], samples_for_parity, references, p) for p in shipped}
    # TensorRT's graphs too, in the fp16-faithful reference evaluator: a conversion that broke them stops here.
    trt_parity = {
        p: check_parity(staging / TENSORRT_DIRS[p], samples_for_parity, references, p)
        for p in shipped
        if plan.candidates[p] == "modelopt"
    }
    for p in shipped:
        _miss = "" if meets_target(report, p, plan.decision_split, plan.limit) else " (misses the accuracy target)"
        log(f"{p}: {_drop(report, p, plan.decision_split)} on {plan.decision_split}{_miss}")
    return parity, trt_parity


def _write_records(
    plan: _Plan,
    staging: Path,
    shipped: list[str],
    scale_record: dict[str, Any],
    report: dict[str, Any],
    latency: dict[str, Any],
    search_record: dict[str, Any] | None,
) -> dict[str, Any]:
    """int8/calibration.json (what reproduces the sets) and int8/accuracy.{json,md}; returns the report's JSON."""
    record = {
        "format": "avemo-calibration",
        "version": 1,
        "cache": str(plan.data),
        "split": plan.split,
        "seed": plan.seed,
        "method": plan.method,
        "cpu_method": CPU_METHOD if "int8-cpu" in shipped else None,
        "clips": [plan.calib_split.ids[i] for i in plan.clips],
        "kept_fp32": plan.kept,
        "unquantized_ops": list(UNQUANTIZED_OPS),
        "scales": {p: scale_record[p] for p in shipped},
        "versions": _versions(),
    }
    int8_dir = staging / PRECISION_DIRS["int8"]
    atomic_write_json(int8_dir / CALIBRATION_FILE, jsonable(record))
    full_report = jsonable(
        {"target_mF1_drop": plan.limit, "decision_split": plan.decision_split, "accuracy": report, "latency": latency}
        | ({"search": search_record} if search_record else {})
    )
    atomic_write_json(int8_dir / f"{REPORT_FILE}.json", full_report)
    markdown = report_markdown(report, latency, search_record, plan.limit)
    atomic_write_bytes(int8_dir / f"{REPORT_FILE}.md", markdown.encode())
    return full_report


def _install(
    plan: _Plan,
    staging: Path,
    shipped: list[str],
    report: dict[str, Any],
    parity: dict[str, Any],
    trt_parity: dict[str, Any],
    started: float,
) -> None:
    """Complete the staged folder (the rest of the model, the manifest) and swap it in for ``plan.models``."""
    shutil.rmtree(staging / SEARCH_DIR, ignore_errors=True)  # the search's rounds are not shipped
    files = tree_hashes(staging)
    # The rest of the model comes along unchanged (an older calibration goes as a whole).
    shutil.copytree(plan.models, staging, symlinks=True, dirs_exist_ok=True, ignore=_top_level(plan.models, INT8_DIRS))
    data_out = _with_int8(plan, files, report, trt_parity)
    data_out.setdefault("parity", {}).update(parity)
    data_out["calibration"] = {"seconds": time.perf_counter() - started, "clips": len(plan.clips), "shipped": shipped}
    write_manifest(staging, data_out)
    replace_tree(staging, plan.models)


def _top_level(root: Path, names: tuple[str, ...]) -> Any:
    """A copytree ``ignore`` that skips ``names`` (and the manifest) in ``root`` itself only."""
    return lambda folder, _: {*names, MANIFEST_FILE} if Path(folder) == root else set()


def _with_int8(
    plan: _Plan, files: dict[str, str], report: dict[str, Any], trt_parity: dict[str, Any]
) -> dict[str, Any]:
    """The manifest's data with its int8 sets replaced by the shipped ones (``files``: their hashes)."""
    candidates, kept = plan.candidates, plan.kept
    shipped = [p for p in candidates if any(f.split("/")[0] == PRECISION_DIRS[p] for f in files)]
    data_out = json.loads(json.dumps(plan.manifest.data))  # a deep copy: the loaded manifest stays as it was
    data_out["files"] = {k: v for k, v in data_out["files"].items() if k.split("/")[0] not in INT8_DIRS} | files
    for p in INT8_DIRS:
        data_out["precisions"].pop(p, None)
    for p in shipped:
        data_out["precisions"][p] = {
            "dir": PRECISION_DIRS[p],
            "parity_tolerance": PARITY_TOLERANCE[p],
            "quantizer": "nvidia-modelopt (explicit Q/DQ)" if candidates[p] == "modelopt" else "onnxruntime QDQ (u8s8)",
            "method": plan.method if candidates[p] == "modelopt" else CPU_METHOD,
            "kept_fp32": kept,
            "unquantized_ops": list(UNQUANTIZED_OPS),
            "calibration": f"{PRECISION_DIRS['int8']}/{CALIBRATION_FILE}",
            "report": f"{PRECISION_DIRS['int8']}/{REPORT_FILE}.md",
            "meets_accuracy_target": meets_target(report, p, plan.decision_split, plan.limit),
        }
        if p in trt_parity:
            data_out["precisions"][p]["tensorrt_graphs"] = {
                "dir": TENSORRT_DIRS[p],
                "unquantized_in": "fp16",
                "fp32_ops": list(FP32_OPS),
                "parity": trt_parity[p],  # in ONNX's fp16-faithful reference evaluator
            }
    return data_out


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
