"""INT8 calibration: clip sampling, kept nodes, ModelOpt Q/DQ graphs in ONNX Runtime, reproducibility, bad input."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import shutil

import numpy as np
import onnx
import pytest

from avemo.contract import (
    AUDIO_FEATS,
    AUDIO_LENGTHS,
    FACE_LENGTHS,
    FACES,
    INVARIANCE_TOLERANCE,
    LABELS,
    MANIFEST_FILE,
    PARITY_TOLERANCE,
    graph_file,
)
from avemo.errors import AvemoError
from avemo.train.cache import CacheSplit

needs_modelopt = pytest.mark.skipif(
    importlib.util.find_spec("modelopt") is None,
    reason="nvidia-modelopt not installed (pip install 'avemo[calibrate]')",
)


def test_one_onnxruntime_distribution_is_installed():
    """ModelOpt's [onnx] extra would add onnxruntime-gpu over onnxruntime (both own one package directory)."""
    names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert len({n for n in names if n.startswith("onnxruntime")} - {"onnxruntime-extensions"}) == 1


def test_clip_sample_covers_labels_and_lengths_and_is_seeded(tiny_cache):
    from avemo.calibration.data import LENGTH_BINS, select_clips, usable

    split = CacheSplit(tiny_cache, "train")
    chosen = select_clips(split, 16, seed=3)
    assert chosen == sorted(set(chosen)) and len(chosen) == 16
    assert chosen == select_clips(split, 16, seed=3)
    assert chosen != select_clips(split, 16, seed=4)
    assert set(chosen) <= set(usable(split, "av").tolist())
    assert (split.labels[chosen] > 0.5).sum(axis=0).min() >= 1  # every emotion is represented

    def length(i):
        return split.audio_length(i) + split.face_count(i)

    lengths = np.array([length(i) for i in usable(split, "av")])
    edges = np.quantile(lengths, np.linspace(0, 1, LENGTH_BINS + 1)[1:-1])
    strata = np.digitize([length(i) for i in chosen], edges)
    assert len(set(strata.tolist())) == LENGTH_BINS  # short and long clips alike


def test_clip_sample_refuses_too_few_clips_or_positives(tiny_cache):
    from avemo.calibration.data import select_clips

    split = CacheSplit(tiny_cache, "train")
    with pytest.raises(AvemoError, match="fewer than --samples 100000"):
        select_clips(split, 100000, seed=0)
    with pytest.raises(AvemoError, match="too few positive clips for"):
        select_clips(split, 8, seed=0, min_per_label=len(split))


def test_reader_yields_each_clip_at_its_own_length(tiny_cache):
    from avemo.calibration.data import CalibrationReader

    split = CacheSplit(tiny_cache, "train")
    reader = CalibrationReader(split, [0, 1, 2], "av")
    first = reader.get_first()
    items = list(reader)
    assert len(items) == 3 and reader.get_next() is None
    np.testing.assert_array_equal(first[AUDIO_FEATS], items[0][AUDIO_FEATS])
    for i, item in zip([0, 1, 2], items, strict=True):
        assert item[AUDIO_FEATS].shape == (1, split.audio_length(i), split.features.audio_dim)
        assert item[AUDIO_LENGTHS].tolist() == [split.audio_length(i)]
        assert item[FACES].shape[:2] == (1, split.face_count(i)) and item[FACE_LENGTHS].tolist() == [
            split.face_count(i)
        ]
        assert item[FACES].dtype == np.uint8 and item[FACES].max() > 1  # pixels, as the runtime feeds them
    assert len(list(reader)) == 3  # iterating again starts over (the quantizers read twice)


def test_default_kept_nodes_are_first_convs_and_last_fc(colearn_export):
    from avemo.calibration.quantize import keep_nodes

    models, _, _ = colearn_export
    graph = onnx.load(str(models / graph_file("av")), load_external_data=False)
    kept = keep_nodes(graph)
    by_name = {n.name: n for n in graph.graph.node}
    reasons = sorted(kept.values())
    assert reasons == [
        "first conv after audio_feats",
        "first conv after faces",
        "last fully connected layer before probs",
    ]
    assert [by_name[n].op_type for n in kept][:2] == ["Conv", "Conv"]
    last_fc = [n.name for n in graph.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    assert last_fc in kept
    assert keep_nodes(graph, defaults=False) == {}
    extra = keep_nodes(graph, defaults=False, patterns=("^node_matmul",))
    assert extra and all(by_name[n].op_type == "MatMul" for n in extra)
    with pytest.raises(AvemoError, match="matches no node"):
        keep_nodes(graph, patterns=("no-such-node",))


@pytest.fixture(scope="module")
def calibrated(colearn_export, tiny_cache, tmp_path_factory):
    """The tiny co-learning export with int8 graphs (ModelOpt max calibration, 12 clips)."""
    from avemo.calibration.calibrate import calibrate

    if importlib.util.find_spec("modelopt") is None:
        pytest.skip("nvidia-modelopt not installed (pip install 'avemo[calibrate]')")
    models = tmp_path_factory.mktemp("calibrated") / "models"
    shutil.copytree(colearn_export[0], models)
    report = calibrate(models, tiny_cache, samples=12, method="max", seed=5, cpu_int8="always", log=lambda *_: None)
    return models, report


@needs_modelopt
def test_int8_graphs_hold_qdq_nodes_and_run_in_onnxruntime(calibrated, tiny_cache):
    from avemo.calibration.data import clip_inputs, usable
    from avemo.runtime.backends.ort import OrtBackend
    from avemo.runtime.models.manifest import load_manifest

    models, _ = calibrated
    manifest = load_manifest(models)  # every new file is hashed in the manifest
    assert {"int8", "int8-cpu"} <= set(manifest.precisions)
    split = CacheSplit(tiny_cache, "valid")
    batch = clip_inputs(split, usable(split, "av")[:4], "av")
    ref = OrtBackend(manifest.graph_path("av", "fp32")).infer(batch)
    for precision in ("int8", "int8-cpu"):
        path = manifest.graph_path("av", precision)
        ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
        assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
        probs = OrtBackend(path).infer(batch)
        assert probs.shape == (4, len(LABELS)) and np.isfinite(probs).all()
        assert 0 < np.abs(probs - ref).max() < 0.5  # quantized (not a copy of fp32), still close
    # The Q/DQ graph is symmetric int8 (zero points 0: what TensorRT requires).
    graph = onnx.load(str(manifest.graph_path("av", "int8")))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # The kept nodes stayed unquantized: their weights feed them directly, not through a DequantizeLinear.
    kept = manifest.data["precisions"]["int8"]["kept_fp32"]["av"]
    producers = {o: n.op_type for n in graph.graph.node for o in n.output}
    for node in graph.graph.node:
        if node.name in kept:
            assert producers.get(node.input[1]) != "DequantizeLinear", node.name


def _scales_by_node(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Q/DQ node name -> its scale (casts inserted by the fp16 conversion rename tensors, not these nodes)."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    qdq = [n for n in graph.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    return {n.name: init[n.input[1]].astype(np.float64) for n in qdq if n.input[1] in init}


@needs_modelopt
def test_tensorrt_gets_the_same_qdq_graph_with_its_unquantized_parts_in_fp16(calibrated, tiny_cache):
    """Issue 13 item 6: int8/fp16 = ModelOpt's Q/DQ graph, same scales, rest fp16 but the fp32 ops; ORT keeps int8/."""
    from avemo.calibration.data import clip_inputs, usable
    from avemo.export.fp16 import FP32_OPS
    from avemo.runtime.backends.ort import OrtBackend
    from avemo.runtime.models.manifest import load_manifest

    models, _ = calibrated
    manifest = load_manifest(models)
    ort_path, trt_path = manifest.graph_path("av", "int8"), manifest.graph_path("av", "int8", tensorrt=True)
    assert (ort_path.parent.name, trt_path.parent.relative_to(models).as_posix()) == ("int8", "int8/fp16")
    ort_graph, trt_graph = (onnx.load(str(p)) for p in (ort_path, trt_path))
    ort_scales, trt_scales = (_scales_by_node(g) for g in (ort_graph, trt_graph))
    assert ort_scales.keys() == trt_scales.keys() and len(ort_scales) > 20
    for name, values in ort_scales.items():  # the calibration itself is shared, rounded to fp16 (tiny ones subnormal)
        np.testing.assert_allclose(trt_scales[name], values, rtol=1e-3, atol=6e-8, err_msg=name)
    dtypes = {t.name: t.data_type for t in trt_graph.graph.initializer}
    dq_scales = [dtypes[n.input[1]] for n in trt_graph.graph.node if n.op_type == "DequantizeLinear"]
    assert dq_scales and set(dq_scales) == {onnx.TensorProto.FLOAT16}  # quantized ops compute in fp16
    norms = [n for n in trt_graph.graph.node if n.op_type in FP32_OPS and n.op_type == "LayerNormalization"]
    assert norms and all(dtypes[n.input[1]] == onnx.TensorProto.FLOAT for n in norms)  # fp32 islands stay
    assert {i.type.tensor_type.elem_type for i in trt_graph.graph.output} == {onnx.TensorProto.FLOAT}
    entry = manifest.data["precisions"]["int8"]["tensorrt_graphs"]
    assert entry["dir"] == "int8/fp16" and entry["parity"]["av"]["max_abs_diff"] <= PARITY_TOLERANCE["int8"]
    # fp16 claims are checked where fp16 is honoured; every int8 set answers alike alone and padded in a batch
    assert {r["runner"] for r in entry["parity"].values()} == {"onnx-reference"}
    for report in (entry["parity"], manifest.data["parity"]["int8"], manifest.data["parity"]["int8-cpu"]):
        assert all(r["padding_invariance"] <= INVARIANCE_TOLERANCE["int8"] for r in report.values())
    split = CacheSplit(tiny_cache, "valid")
    batch = clip_inputs(split, usable(split, "av")[:4], "av")
    assert batch[FACES].dtype == np.uint8  # calibration and judging feed pixels, as the runtime does
    ort_probs, trt_probs = (OrtBackend(p).infer(batch) for p in (ort_path, trt_path))
    assert np.abs(ort_probs - trt_probs).max() < 0.05  # fp16 around the same int8 ops
    # Both int8 sets take uint8 faces, read only by a Cast to float/half (TensorRT's rule for uint8 inputs).
    for modality in ("v", "av"):
        for path in (manifest.graph_path(modality, "int8"), manifest.graph_path(modality, "int8", tensorrt=True)):
            graph = onnx.load(str(path), load_external_data=False)
            assert {i.name: i.type.tensor_type.elem_type for i in graph.graph.input}[FACES] == onnx.TensorProto.UINT8
            readers = [n for n in graph.graph.node if FACES in n.input]
            assert [n.op_type for n in readers] == ["Cast"], path
            assert readers[0].attribute[0].i in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16), path


@needs_modelopt
def test_accuracy_report_compares_precisions_against_fp32(calibrated):
    models, report = calibrated
    saved = json.loads((models / "int8" / "accuracy.json").read_text())
    assert saved["accuracy"] == json.loads(json.dumps(report["accuracy"]))
    for split in ("valid", "test"):
        for modality in ("a", "v", "av"):
            rows = report["accuracy"][split][modality]
            assert set(rows) == {"fp32", "fp16", "int8", "int8-cpu"}
            assert rows["fp32"]["label_agreement"] == 1.0 and rows["fp32"]["mF1_drop"] == 0.0
            assert rows["int8"]["label_agreement"] >= 0.8  # int8 agrees with fp32 on most labels
            assert rows["int8"]["mF1_drop"] == pytest.approx(rows["fp32"]["mF1"] - rows["int8"]["mF1"])
    md = (models / "int8" / "accuracy.md").read_text()
    assert "| test | A+V | int8 |" in md and "speed-up vs fp32" in md
    latency = report["latency"]
    assert set(latency["results"]) == {"fp32", "int8", "int8-cpu"}
    assert all(len(v) == latency["rounds"] * latency["iters"] for v in latency["samples_ms"].values())


@needs_modelopt
def test_same_clips_reproduce_the_same_scales_and_graphs(calibrated, tiny_cache, tmp_path):
    from avemo.calibration.calibrate import calibrate

    models, _ = calibrated
    record = json.loads((models / "int8" / "calibration.json").read_text())
    split = CacheSplit(tiny_cache, "train")
    assert len(record["clips"]) == 12 and set(record["clips"]) <= set(split.ids)
    assert (record["method"], record["cpu_method"]) == ("max", "max")
    again = tmp_path / "models"
    shutil.copytree(models, again)
    shutil.rmtree(again / "int8")
    calibrate(again, tiny_cache, method="max", clips_from=models / "int8" / "calibration.json", cpu_int8="never",
              report_splits=("valid",), latency_rounds=1, log=lambda *_: None)  # fmt: skip
    rebuilt = json.loads((again / "int8" / "calibration.json").read_text())
    assert rebuilt["clips"] == record["clips"]
    assert rebuilt["scales"]["int8"] == record["scales"]["int8"]  # bit for bit (floats in JSON round-trip)
    first = json.loads((models / MANIFEST_FILE).read_text())["files"]
    second = json.loads((again / MANIFEST_FILE).read_text())["files"]
    for name in ("int8/avemo_a.onnx", "int8/avemo_av.onnx", "int8/avemo.weights"):
        assert first[name] == second[name], name
    assert "int8-cpu" not in json.loads((again / MANIFEST_FILE).read_text())["precisions"]  # --cpu-int8 never


def test_bad_input_is_refused_before_any_work(colearn_export, tiny_cache, tmp_path):
    from avemo.calibration.calibrate import calibrate
    from avemo.config import PRESETS
    from avemo.train.synth import SynthSpec, write_synthetic_cache

    models = tmp_path / "models"
    shutil.copytree(colearn_export[0], models)
    quiet = {"log": lambda *_: None}
    with pytest.raises(AvemoError, match="not on a split the report judges"):
        calibrate(models, tiny_cache, split="test", **quiet)
    other = tmp_path / "other-cache"
    features = dataclasses.replace(PRESETS["tiny"].features, face_size=32)
    write_synthetic_cache(other, features, SynthSpec(clips=12, min_seconds=0.6, max_seconds=1.0), seed=0)
    with pytest.raises(AvemoError, match=r"cache features differ from the model's.*face_size"):
        calibrate(models, other, **quiet)
    with pytest.raises(AvemoError, match="fewer than --samples"):
        calibrate(models, tiny_cache, samples=10000, **quiet)
    clips = tmp_path / "clips.json"
    clips.write_text(json.dumps(["no-such-clip"]))
    with pytest.raises(AvemoError, match="1 clips are not in"):
        calibrate(models, tiny_cache, clips_from=clips, **quiet)
    (models / "avemo_av.onnx").write_bytes((models / "avemo_av.onnx").read_bytes() + b"\0")
    with pytest.raises(AvemoError, match=r"avemo_av\.onnx: sha256 does not match"):
        calibrate(models, tiny_cache, **quiet)
    assert not (models / "int8").exists() and not (models / ".calibrate-staging").exists()


@needs_modelopt
def test_a_baseline_model_calibrates_its_one_graph(micro_config, tiny_cache, tmp_path):
    from avemo.calibration.calibrate import calibrate
    from avemo.export.exporter import export_run
    from avemo.runtime.models.manifest import load_manifest
    from tests.conftest import make_checkpoint

    ckpt, _ = make_checkpoint(tmp_path / "audio.pt", micro_config, "audio")
    export_run(ckpt, tmp_path / "models", log=lambda *_: None)
    report = calibrate(tmp_path / "models", tiny_cache, samples=8, method="max", cpu_int8="never",
                       report_splits=("valid",), latency_rounds=1, log=lambda *_: None)  # fmt: skip
    assert list(report["accuracy"]["valid"]) == ["a"] and report["latency"]["graph"] == "a"
    manifest = load_manifest(tmp_path / "models")
    assert manifest.precisions == ["fp32", "int8"] and manifest.graph_path("a", "int8").is_file()
    clips = json.loads((tmp_path / "models" / "int8" / "calibration.json").read_text())["clips"]
    split = CacheSplit(tiny_cache, "train")
    assert all(split.audio_length(split.ids.index(c)) > 0 for c in clips)  # audio is all it needs


FOLD_PROBE = """
import sys
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
if sys.argv[1] == "quiet":
    from avemo.calibration.cli import quiet_onnxruntime
    quiet_onnxruntime()
scales = [numpy_helper.from_array(np.full(4, v, np.float16), n) for n, v in (("a", 1), ("b", 2))]
nodes = [helper.make_node("Mul", ["a", "b"], ["c"], name="w_scale"),
         helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "cf"], ["y"])]
io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
graph = helper.make_graph(nodes, "g", io[:1], io[1:], scales)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
print(session.run(None, {"x": np.zeros(4, np.float32)})[0].tolist())
"""


@pytest.mark.parametrize("mode", ["loud", "quiet"])
def test_calibrate_silences_onnx_runtimes_constant_folding_warnings_and_says_so_once(mode):
    """An fp16 Mul of two constants, as int8/fp16/ has per weight scale: ONNX Runtime's CPU provider warns
    that it cannot fold it; after `quiet_onnxruntime` (what `avemo calibrate` calls first) it does not."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FOLD_PROBE, mode], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[2.0, 2.0, 2.0, 2.0]"
    warned = "can't constant fold Mul node 'w_scale'" in done.stderr
    assert warned == (mode == "loud")
    assert done.stderr.count("warnings are off while calibrating") == (mode == "quiet")
