"""Sensitivity-guided mixed precision: the fewest layers left unquantized so the mF1 drop meets a budget.

One decision per layer for all graphs: the graphs share weights, so a layer is
named by its module (``model.cross.blocks.0.ffn.3``) wherever it appears.
Sensitivities are measured on the target graph (A+V) by taking one layer's
Q/DQ inputs out of the fully quantized graph (same scales: no re-calibration),
then judged on the decision split; the chosen set is re-quantized by ModelOpt
and judged again, since ModelOpt places some Q/DQ nodes by their neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from avemo.errors import AvemoError

#: The layers the search decides on (and the budget counts).
LAYER_OPS = ("Conv", "Gemm", "MatMul")
#: Below this share of LAYER_OPS nodes still int8 the budget is called unmet: the model would no longer be INT8.
MIN_QUANTIZED_SHARE = 0.5
#: Rounds of "search on the measured graph, then re-quantize and judge": ModelOpt rarely needs a second.
MAX_ROUNDS = 3


@dataclass(frozen=True)
class Trial:
    """One graph judged on the decision split against fp32."""

    drop: float  # mF1 points lost against fp32 (the budget's measure)
    error: float  # mean |p - p_fp32| over clips and labels (the ranking proxy: smooth where mF1 is discrete)


def layer_keys(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> layer key, the same in every graph exported from one model.

    A layer with parameters is named by its module (from its weight or bias
    initializer name); an activation-only MatMul (attention) by the nearest
    weighted layer upstream and its order among that layer's followers.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    initializers = {t.name: t for t in graph.initializer}
    keys: dict[str, str] = {}
    followers: dict[str, int] = {}
    for node in graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        params = [_source(i, producer) for i in node.input[1:]]  # a Q/DQ graph's weights read through Q/DQ
        named = [i for i in params if i in initializers and i.startswith("model.")]
        if named:
            keys[node.name] = named[0].rsplit(".", 1)[0]
        elif params[0] in initializers:
            keys[node.name] = f"{node.op_type}:{_digest(initializers[params[0]])}"
        else:
            upstream = _nearest_layer(node, producer, keys)
            followers[upstream] = followers.get(upstream, -1) + 1
            keys[node.name] = f"{upstream}/{node.op_type.lower()}{followers[upstream]}"
    return keys


def _source(tensor: str, producer: dict[str, onnx.NodeProto]) -> str:
    """The tensor a chain of QuantizeLinear / DequantizeLinear nodes starts from."""
    while tensor in producer and producer[tensor].op_type in ("QuantizeLinear", "DequantizeLinear"):
        tensor = producer[tensor].input[0]
    return tensor


def _digest(tensor: onnx.TensorProto) -> str:
    """Content key of a weight that no module name reaches (stable across graphs: weights are shared)."""
    import hashlib

    data = onnx.numpy_helper.to_array(tensor)
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()[:12]


def _nearest_layer(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto], keys: dict[str, str]) -> str:
    """Breadth-first up the graph: the first node already keyed that has parameters."""
    frontier, seen = list(node.input), set()
    while frontier:
        nxt = []
        for tensor in frontier:
            up = producer.get(tensor)
            if up is None or up.name in seen:
                continue
            seen.add(up.name)
            if up.name in keys and "/" not in keys[up.name]:
                return keys[up.name]
            nxt.extend(up.input)
        frontier = nxt
    return "input"


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the LAYER_OPS nodes that read at least one input through a DequantizeLinear, in graph order."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node if n.op_type in LAYER_OPS and dq_outputs.intersection(n.input)]


def unquantize(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """A copy of a Q/DQ graph whose ``nodes`` read their float inputs directly (Q/DQ left unused are dropped).

    What ModelOpt's ``nodes_to_exclude`` does to those nodes, with every other scale unchanged.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name not in nodes:
            continue
        for k, tensor in enumerate(node.input):
            dq = producer.get(tensor)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
    _drop_unused(graph)
    return out


def _drop_unused(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):  # topological order: consumers come after producers
        if needed.intersection(node.output) or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))


def search(
    quantize: Callable[[set[str]], Path],
    judge: Callable[[Path], Trial],
    target: str,
    max_drop: float,
    log: Any = print,
) -> dict[str, Any]:
    """Layer keys to leave unquantized (beyond those ``quantize`` always keeps) and the record of how.

    ``quantize(keys)`` writes all graphs with those layers unquantized and returns their folder;
    ``judge(path)`` measures one graph. Raises nothing when the budget is missed: ``met`` says so.
    """
    folder = quantize(set())
    graph_path = folder / target
    first = judge(graph_path)
    model = onnx.load(str(graph_path), load_external_data=False)
    record: dict[str, Any] = {"max_drop": max_drop, "before": vars(first), "kept": [], "sensitivity": []}
    total = sum(n.op_type in LAYER_OPS for n in model.graph.node)
    record["layers"] = total
    if first.drop <= max_drop:
        log(f"search: {first.drop:+.2f} points with every layer int8, within {max_drop}: nothing more kept")
        return record | _outcome(record, first, model, folder, [], True)
    keys = layer_keys(model)
    ranking = sensitivities(model, graph_path, keys, first, judge, log)
    record["sensitivity"] = ranking
    record["proxy_vs_mF1_spearman"] = _spearman([r["error_gain"] for r in ranking], [r["mF1_gain"] for r in ranking])
    budget = len(quantized_layers(model)) - math.ceil(MIN_QUANTIZED_SHARE * total)  # layers we may still keep
    order = [r["layer"] for r in ranking][: max(budget, 0)]
    kept: list[str] = []
    best = {"trial": first, "kept": kept, "folder": folder, "model": model}
    # Unreachable even with every allowed layer out? Then settle for that set at once, without a scan.
    reachable = bool(order) and _judge_variant(model, graph_path, _nodes(keys, order), judge).drop <= max_drop
    for round_ in range(MAX_ROUNDS if reachable else 1):
        if reachable:
            chosen = _smallest_prefix(model, graph_path, keys, order, len(kept), judge, max_drop)
        else:
            chosen = len(order) if order else None
        if chosen is None:
            break
        kept = order[:chosen]
        folder = quantize(set(kept))
        graph_path = folder / target
        model = onnx.load(str(graph_path), load_external_data=False)
        trial = judge(graph_path)
        log(f"search round {round_ + 1}: {len(kept)} layers kept, re-quantized: {trial.drop:+.2f} points")
        if trial.drop <= max_drop:
            return record | _outcome(record, trial, model, folder, kept, True)
        if trial.drop < best["trial"].drop:
            best = {"trial": trial, "kept": kept, "folder": folder, "model": model}
    return record | _outcome(record, best["trial"], best["model"], best["folder"], best["kept"], False)


def sensitivities(
    model: onnx.ModelProto,
    graph_path: Path,
    keys: dict[str, str],
    first: Trial,
    judge: Callable[[Path], Trial],
    log: Any = print,
) -> list[dict[str, Any]]:
    """Each quantized layer left alone unquantized: mF1 and proxy gained, most sensitive first (ties by name)."""
    from tqdm import tqdm

    ops = {n.name: n.op_type for n in model.graph.node}
    rows = []
    for name in tqdm(quantized_layers(model), desc="sensitivity", unit="layer", leave=False):
        trial = _judge_variant(model, graph_path, {name}, judge)
        rows.append(
            {
                "layer": keys[name],
                "node": name,
                "op": ops[name],
                "mF1_gain": first.drop - trial.drop,
                "error_gain": first.error - trial.error,
            }
        )
    rows.sort(key=lambda r: (-r["error_gain"], -r["mF1_gain"], r["layer"]))
    log(f"search: sensitivity of {len(rows)} layers measured; most sensitive {rows[0]['layer']}" if rows else "")
    return rows


def _smallest_prefix(
    model: onnx.ModelProto,
    graph_path: Path,
    keys: dict[str, str],
    order: list[str],
    start: int,
    judge: Callable[[Path], Trial],
    max_drop: float,
) -> int | None:
    """The smallest k > start whose top-k layers taken out of ``model`` meet the budget (else all of them)."""
    if start >= len(order):
        return None
    for k in range(start + 1, len(order)):
        if _judge_variant(model, graph_path, _nodes(keys, order[:k]), judge).drop <= max_drop:
            return k
    return len(order)


def _nodes(keys: dict[str, str], layers: list[str]) -> set[str]:
    """The graph's node names of ``layers`` (keys)."""
    wanted = set(layers)
    return {node for node, key in keys.items() if key in wanted}


def _judge_variant(model: onnx.ModelProto, graph_path: Path, nodes: set[str], judge: Callable[[Path], Trial]) -> Trial:
    """Judge ``model`` with ``nodes`` unquantized, written beside ``graph_path`` (its external data resolve)."""
    variant = graph_path.with_name(f".variant-{graph_path.name}")
    onnx.save(unquantize(model, nodes), str(variant))
    try:
        return judge(variant)
    finally:
        variant.unlink(missing_ok=True)


def _outcome(
    record: dict[str, Any], trial: Trial, model: onnx.ModelProto, folder: Path, kept: list[str], met: bool
) -> dict[str, Any]:
    quantized = len(quantized_layers(model))
    gains = {r["layer"]: r for r in record["sensitivity"]}
    return {
        "met": met,
        "after": vars(trial),
        "kept": [gains[k] for k in kept],
        "quantized_layers": quantized,
        "quantized_share": quantized / record["layers"] if record["layers"] else 0.0,
        "folder": folder,
    }


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None when either side is constant."""
    if len(a) < 3:
        return None
    ra, rb = (_ranks(np.asarray(x, float)) for x in (a, b))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def budget_error(record: dict[str, Any]) -> AvemoError:
    """The one-line refusal when the budget cannot be met with enough of the model still int8."""
    return AvemoError(
        f"--max-drop {record['max_drop']}: not met with at least {MIN_QUANTIZED_SHARE:.0%} of the "
        f"{'/'.join(LAYER_OPS)} layers int8 (best: {record['after']['drop']:+.2f} points with "
        f"{len(record['kept'])} layers kept, {record['before']['drop']:+.2f} with none); nothing written. "
        "Raise --max-drop, calibrate on more clips, or pass --accept-miss to write it anyway"
    )
