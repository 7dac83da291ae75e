"""Issue 27: INT8 within an accuracy budget (sensitivity search over layers shared by the three graphs)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from avemo.contract import MANIFEST_FILE, graph_file
from avemo.errors import AvemoError

needs_modelopt = pytest.mark.skipif(
    importlib.util.find_spec("modelopt") is None,
    reason="nvidia-modelopt not installed (pip install 'avemo[calibrate]')",
)
PLANTED = "model.cross.blocks.0.ffn.3"  # shared by the A, V and A+V graphs
QUIET = {"log": lambda *_: None, "cpu_int8": "never", "report_splits": ("valid",), "latency_rounds": 1}


def test_layer_keys_name_each_layer_once_and_alike_in_every_graph(colearn_export):
    from avemo.calibration.search import LAYER_OPS, layer_keys

    models, _, _ = colearn_export
    keys = {m: layer_keys(onnx.load(str(models / graph_file(m)), load_external_data=False)) for m in ("a", "v", "av")}
    for modality, by_node in keys.items():
        graph = onnx.load(str(models / graph_file(modality)), load_external_data=False)
        assert len(by_node) == sum(n.op_type in LAYER_OPS for n in graph.graph.node)
        assert len(set(by_node.values())) == len(by_node), modality  # one decision names one layer
    ops = {m: {k: n.op_type for n in _graph(models, m).graph.node if (k := keys[m].get(n.name))} for m in keys}
    for modality in ("a", "v"):  # every A or V layer is the same layer (same op) in A+V
        assert ops[modality].items() <= ops["av"].items(), modality
    assert PLANTED in ops["a"] and PLANTED in ops["v"]
    assert any(k.startswith("model.visual.cnn") for k in ops["v"]) and not any("visual" in k for k in ops["a"])


def _graph(models: Path, modality: str) -> onnx.ModelProto:
    return onnx.load(str(models / graph_file(modality)), load_external_data=False)


def _qdq_matmuls() -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(w via Q/DQ) twice, the two sharing x's Q/DQ (as ModelOpt writes them)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="xq"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="xd")]  # fmt: skip
    for k in ("1", "2"):
        nodes += [
            helper.make_node("QuantizeLinear", [f"w{k}", "s", "z"], [f"w{k}q"], name=f"w{k}q"),
            helper.make_node("DequantizeLinear", [f"w{k}q", "s", "z"], [f"w{k}d"], name=f"w{k}d"),
            helper.make_node("MatMul", ["xd", f"w{k}d"], [f"y{k}"], name=f"mm{k}"),
        ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, [2, 3]) for k in ("1", "2")],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_unquantize_gives_one_layer_its_float_inputs_and_leaves_the_rest():
    import onnxruntime as ort

    from avemo.calibration.search import quantized_layers, unquantize

    model = _qdq_matmuls()
    assert quantized_layers(model) == ["mm1", "mm2"]
    changed = unquantize(model, {"mm1"})
    onnx.checker.check_model(changed)
    assert quantized_layers(changed) == ["mm2"] and quantized_layers(model) == ["mm1", "mm2"]  # a copy
    names = {n.name for n in changed.graph.node}
    assert "w1q" not in names and "w1d" not in names and {"xq", "xd", "w2q", "w2d"} <= names  # shared Q/DQ stays
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    y1, y2 = ort.InferenceSession(changed.SerializeToString()).run(None, {"x": x})
    q1, q2 = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(y1, x @ w1, rtol=1e-6)  # float, exactly
    np.testing.assert_allclose(y2, q2, atol=1e-6)  # the other layer still quantized (float rounding aside)
    assert np.abs(q1 - x @ w1).max() > 1e-3  # (and quantizing it did change it)


def _plant(models: Path) -> None:
    """Make one layer of an exported co-learning model one that int8 ruins (and that fp32 depends on).

    The layer gets an input column of huge weights that only ever meets zeros: the FFN channel it reads is held
    at exactly 0 (its first Linear's row and bias are zero, silu(0) = 0). Per-channel int8 then scales every
    output channel to that column and rounds all the layer's other weights to 0. The same tensors are edited
    in the A, V and A+V graphs (large ones once, in the shared weight file), so all three hold the planted layer.
    """
    from avemo.calibration.search import layer_keys
    from avemo.io import sha256_file

    graphs = {m: _graph(models, m) for m in ("a", "v", "av")}
    nodes = {layer_keys(graphs["av"]).get(n.name): n for n in graphs["av"].graph.node}
    ffn_in, ffn_out = nodes[PLANTED.replace("ffn.3", "ffn.0")], nodes[PLANTED]
    done: set[str] = set()

    def edit(name: str, change) -> None:
        for graph in graphs.values():
            t = next((t for t in graph.graph.initializer if t.name == name), None)
            if t is None:
                continue
            if t.data_location == TensorProto.EXTERNAL:
                where = {e.key: e.value for e in t.external_data}
                if where["offset"] not in done:  # stored once for all graphs
                    done.add(where["offset"])
                    view = np.memmap(models / where["location"], np.float32, "r+", int(where["offset"]), tuple(t.dims))
                    change(view)
                    view.flush()
            else:
                array = numpy_helper.to_array(t).copy()
                change(array)
                t.CopyFrom(numpy_helper.from_array(array, name))

    def trans_b(node: onnx.NodeProto) -> bool:
        return any(a.name == "transB" and a.i for a in node.attribute)

    def channel(w: np.ndarray, node: onnx.NodeProto, axis_out: bool) -> np.ndarray:
        """Output channel 0 (axis_out) or input column 0 of a Gemm weight, as stored."""
        return w[0] if trans_b(node) == axis_out else w[:, 0]

    def plant(w: np.ndarray) -> None:
        w *= 30.0  # the FFN dominates its block: an untrained model's outputs then depend on it
        channel(w, ffn_out, False).fill(1000.0 * np.abs(w).max())  # ... and read with huge weights

    edit(ffn_in.input[1], lambda w: channel(w, ffn_in, True).fill(0.0))  # FFN channel 0: always exactly 0 ...
    edit(ffn_in.input[2], lambda b: b.__setitem__(0, 0.0))
    edit(ffn_out.input[1], plant)
    manifest = json.loads((models / MANIFEST_FILE).read_text())
    for modality, graph in graphs.items():
        onnx.save(graph, str(models / graph_file(modality)))
    for name in [*map(graph_file, graphs), "avemo.weights"]:
        manifest["files"][name] = sha256_file(models / name)
    (models / MANIFEST_FILE).write_text(json.dumps(manifest))


def _labels_from_fp32(cache: Path, models: Path, out: Path, modality: str) -> Path:
    """A copy of ``cache`` whose valid labels are the fp32 model's own decisions: fp32 scores 100 mF1 there,
    so any label int8 flips is a drop (an untrained model's mF1 would move either way)."""
    from avemo.calibration.report import predict_graph
    from avemo.train.cache import CacheSplit

    shutil.copytree(cache, out)
    probs, idx = predict_graph(models / graph_file(modality), CacheSplit(out, "valid"), modality)
    index = dict(np.load(out / "valid" / "index.npz"))
    index["labels"][idx] = (probs >= 0.5).astype(np.float32)
    np.savez(out / "valid" / "index.npz", **index)
    return out


@pytest.fixture
def planted(colearn_export, tiny_cache, tmp_path):
    if importlib.util.find_spec("modelopt") is None:
        pytest.skip("nvidia-modelopt not installed (pip install 'avemo[calibrate]')")
    models = tmp_path / "models"
    shutil.copytree(colearn_export[0], models)
    from avemo.calibration.report import predict_graph
    from avemo.train.cache import CacheSplit

    def fp32() -> np.ndarray:
        return predict_graph(models / graph_file("av"), CacheSplit(tiny_cache, "valid"), "av")[0]

    before = fp32()
    _plant(models)
    assert np.abs(fp32() - before).max() < 0.5  # still a model of the same kind (parity's int8 bound holds)
    return models, _labels_from_fp32(tiny_cache, models, tmp_path / "cache", "av")


@needs_modelopt
def test_search_keeps_the_planted_layer_and_only_it_in_all_three_graphs(planted):
    from avemo.calibration.calibrate import calibrate
    from avemo.calibration.search import layer_keys, quantized_layers
    from avemo.runtime.models.manifest import load_manifest

    models, cache = planted
    # The planted layer in int8 flips most labels; the rest of int8 flips a few of this small split's 30 labels.
    budget = 20.0
    report = calibrate(models, cache, samples=8, method="max", max_drop=budget, **QUIET)
    search = report["search"]
    assert search["before"]["drop"] > budget  # the planted layer int8 misses the budget ...
    assert search["sensitivity"][0]["layer"] == PLANTED  # ... is measured as the most sensitive ...
    assert [r["layer"] for r in search["kept"]] == [PLANTED]  # ... and is the one kept
    assert search["met"] and search["after"]["drop"] <= budget
    assert report["accuracy"]["valid"]["av"]["int8"]["mF1_drop"] == pytest.approx(search["after"]["drop"])
    assert search["quantized_share"] >= 0.6
    assert 0.0 < search["kept"][0]["flops_share"] <= search["unquantized_flops_share"] < 1.0
    manifest = load_manifest(models)
    entry = manifest.data["precisions"]["int8"]
    assert entry["meets_accuracy_target"] is True
    for modality in ("a", "v", "av"):  # one decision, applied to every graph holding the layer
        int8 = onnx.load(str(manifest.graph_path(modality, "int8")), load_external_data=False)
        node = {k: n for n, k in layer_keys(int8).items()}[PLANTED]
        assert node in entry["kept_fp32"][modality] and node not in quantized_layers(int8), modality
        assert len(entry["kept_fp32"][modality]) == 1  # the rule's first convs / last FC are not kept by default
    md = (models / "int8" / "accuracy.md").read_text()
    assert f"| {PLANTED} |" in md and "budget met" in md
    assert "int8 (all layers)" in report["latency"]["results"]  # the cost in time, beside the fully int8 set


@needs_modelopt
def test_a_budget_needing_over_half_the_layers_unquantized_is_refused(micro_config, tiny_cache, tmp_path):
    from avemo.calibration.calibrate import calibrate
    from avemo.export.exporter import export_run
    from avemo.runtime.models.manifest import load_manifest
    from tests.conftest import make_checkpoint

    ckpt, _ = make_checkpoint(tmp_path / "audio.pt", micro_config, "audio")
    models = tmp_path / "models"
    export_run(ckpt, models, log=lambda *_: None)
    cache = _labels_from_fp32(tiny_cache, models, tmp_path / "cache", "a")
    manifest_before = (models / MANIFEST_FILE).read_bytes()
    # fp32 scores 100 on these labels: a gain of 1 point over it cannot be reached by any set of layers.
    with pytest.raises(AvemoError, match=r"--max-drop -1.0: not met with at least 50% .*nothing written") as err:
        calibrate(models, cache, samples=8, method="max", max_drop=-1.0, **QUIET)
    assert "\n" not in str(err.value)
    assert (models / MANIFEST_FILE).read_bytes() == manifest_before and not (models / "int8").exists()
    report = calibrate(models, cache, samples=8, method="max", max_drop=-1.0, accept_miss=True, **QUIET)
    search = report["search"]
    assert not search["met"] and search["quantized_share"] >= 0.5  # it stopped at half the layers int8
    assert search["after"]["drop"] <= search["before"]["drop"]  # the best set it found, not a worse one
    assert load_manifest(models).data["precisions"]["int8"]["meets_accuracy_target"] is False
    assert "budget missed" in (models / "int8" / "accuracy.md").read_text()
    assert json.loads((models / "int8" / "accuracy.json").read_text())["target_mF1_drop"] == -1.0
