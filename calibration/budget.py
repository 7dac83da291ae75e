"""``--max-drop``: the sensitivity search (``search.py``) run on real int8 sets.

ModelOpt quantizes each round's set (``quantize_set``), ONNX Runtime judges it
on the decision split against fp32, and the kept layers get their share of the
graph's FLOPs for the report.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from avemo.calibration.data import DecisionInputs
from avemo.calibration.quantize import QuantJob, quantize_set
from avemo.calibration.search import Trial, layer_keys, quantized_layers, search
from avemo.contract import PRECISION_DIRS, graph_file
from avemo.runtime.backends import open_onnx
from avemo.runtime.backends.parity import sample_inputs
from avemo.runtime.models.manifest import Manifest
from avemo.runtime.profile.flops import node_flops
from avemo.train.cache import CacheSplit
from avemo.train.metrics import emotion_f1

SEARCH_DIR = ".search"  # inside the staging folder: one quantized set per search round
FLOPS_SECONDS = 10.0  # clip length the FLOPs shares are counted at (as the latency clip)


def search_int8(
    job: QuantJob,
    kept: dict[str, dict[str, str]],
    split: CacheSplit,
    manifest: Manifest,
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
        scales[out] = quantize_set(dataclasses.replace(job, keep=nodes), out)
        return out

    inputs = DecisionInputs(split, target)

    def predict(path: Path) -> np.ndarray:
        with open_onnx(path, threads=threads, workload="inference") as backend:
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
