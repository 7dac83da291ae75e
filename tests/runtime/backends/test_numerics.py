"""fp16 numerics (issue 21): the graph lint, the fp16-faithful reference, parity at the profile's corners, and
answers that do not change when a clip is padded into a batch.

The bug class: an fp16 graph that computes a length in floats rounds (L + 1) / 2 half-to-even above 2048
frames and admits one padded position. ONNX Runtime on CPU hides it (it runs fp16 ops in fp32); ONNX's
reference evaluator, like a strongly typed TensorRT engine, does not. The "old" graphs below are made the
way the model made them before the fix (``torch.div(lengths + 1, 2, rounding_mode="trunc")``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from avemo.cli import main
from avemo.contract import AUDIO_FEATS, AUDIO_LENGTHS, INVARIANCE_TOLERANCE, graph_file
from avemo.errors import AvemoError
from avemo.runtime.backends.numerics import check_graph_numerics, fp16_integer_arithmetic
from avemo.runtime.backends.ort import OrtBackend
from avemo.runtime.backends.parity import (
    FP16_ROUNDING_FRAMES,
    ParityError,
    check_parity,
    load_references,
    parity_samples,
)
from avemo.runtime.backends.reference import ReferenceBackend
from avemo.runtime.models.manifest import load_manifest
from tests.conftest import FAKES, TINY, double_modules, make_checkpoint


def _save(tmp_path: Path, name: str, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _value(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _halving_graph(tmp_path: Path, half: bool) -> Path:
    """lengths (float) -> [Cast fp16] -> Floor -> Cast int64: pooled-length arithmetic, in fp16 or not."""
    f = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], name="to_half", to=f),
        helper.make_node("Floor", ["xh"], ["fl"], name="floor_length"),
        helper.make_node("Cast", ["fl"], ["y"], name="to_index", to=TensorProto.INT64),
    ]
    name = "half" if half else "full"
    return _save(tmp_path, name, nodes, [_value("x", TensorProto.FLOAT, [2])], [_value("y", TensorProto.INT64, [2])])


def test_lint_names_rounding_and_integer_casts_that_read_fp16(tmp_path):
    found = fp16_integer_arithmetic(onnx.load(_halving_graph(tmp_path, half=True)))
    assert [f.split(" (")[0] for f in found] == ["node floor_length", "node to_index"]
    assert "Cast to INT64" in found[1]
    with pytest.raises(AvemoError, match=r"integer arithmetic in fp16.*floor_length \(Floor\).*and 1 more"):
        check_graph_numerics(tmp_path / "half.onnx")
    # the same arithmetic in fp32 is exact for these lengths: not flagged
    assert fp16_integer_arithmetic(onnx.load(_halving_graph(tmp_path, half=False))) == []
    check_graph_numerics(tmp_path / "full.onnx")


def test_reference_honours_fp16_where_onnxruntime_does_not(tmp_path):
    """Cast to fp16, Floor, Cast back: the pooled-length chain. 1025.5 is no fp16 number and rounds half-to-even
    to 1026 before Floor. ONNX Runtime on CPU has no fp16 Floor, runs it in fp32 and drops the cast pair around
    it: 1025. The reference evaluator and the TensorRT double's fp16 engines round, as TensorRT must."""
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Floor", ["h"], ["f"]),
        helper.make_node("Cast", ["f"], ["y"], to=TensorProto.FLOAT),
    ]
    x = _value("x", TensorProto.FLOAT, [3])
    path = _save(tmp_path, "roundtrip", nodes, [x], [_value("y", TensorProto.FLOAT, [3])])
    feeds = {"x": np.array([1025.5, 1251.5, 1024.5], np.float32)}
    assert OrtBackend(path).infer(feeds).tolist() == [1025.0, 1251.0, 1024.0]  # ONNX Runtime: hidden
    assert ReferenceBackend(path).infer(feeds).tolist() == [1026.0, 1252.0, 1024.0]
    double = _tensorrt_double()
    assert double.engine_runner(str(path), tf32=False).run(None, feeds)[0].tolist() == [1026.0, 1252.0, 1024.0]


def _tensorrt_double():
    sys.path.insert(0, str(FAKES))
    try:
        import tensorrt  # the double (tests/fakes)
    finally:
        sys.path.remove(str(FAKES))
    assert "TEST DOUBLE" in (tensorrt.__doc__ or "")
    return tensorrt


@pytest.fixture
def unload_double():
    yield
    for name in double_modules():
        sys.modules.pop(name, None)


def test_double_reads_tf32_only_in_products(tmp_path, unload_double):
    """Tensor cores read the two operands of a product as TF32; the Add beside it sees the exact value."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "x"], ["y"])]
    w = np.array([[1.0 + 2.0**-12, 0.5], [0.25, 1.0 - 2.0**-13]], np.float32)
    path = _save(
        tmp_path,
        "product",
        nodes,
        [_value("x", TensorProto.FLOAT, [1, 2])],
        [_value("y", TensorProto.FLOAT, [1, 2])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    x = np.array([[1.0 + 2.0**-14, 3.0 + 2.0**-12]], np.float32)
    double = _tensorrt_double()
    got = double.engine_runner(str(path), tf32=True).run(None, {"x": x})[0]
    tf32 = double._runtime._tf32
    np.testing.assert_array_equal(got, tf32(x) @ tf32(w) + x)
    assert not np.array_equal(tf32(x), x) and not np.allclose(got, x @ w + x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(double.engine_runner(str(path), tf32=False).run(None, {"x": x})[0], x @ w + x, 1e-6)


# --- the length bug, made as the model made it before the fix -------------------------------------------------


def _old_pooled_mask(mask: torch.Tensor) -> torch.Tensor:
    from avemo.train.model import length_mask

    lengths = torch.div(mask.sum(1) + 1, 2, rounding_mode="trunc")
    return length_mask(lengths, (mask.shape[1] + 1) // 2)


def _unchecked(graph_dir, samples, references, precision, threads=None):
    """The export's checks as they were before the lint and the invariance check existed."""
    keys = ("max_abs_diff", "padding_invariance", "seconds")
    return {m: {**dict.fromkeys(keys, 0.0), "label_agreement": 1.0, "runner": "unchecked"} for m in samples}


def _sensitised_audio_export(root: Path, old: bool, monkeypatch) -> Path:
    """An audio-only tiny model exported with fp16 graphs, its classifier made sensitive: head weights x100 and
    the bias re-centred so the logits of a 2050-frame clip sit at 0, where a logit change shows in the
    probabilities (an untrained model moves by only one fp16 step, 2.4e-4, a trained one by up to 0.39)."""
    import avemo.export.exporter as exporter
    import avemo.train.model as model_module
    from avemo.config import TrainConfig
    from avemo.train.checkpoint import save_checkpoint

    if old:
        monkeypatch.setattr(model_module, "pooled_mask", _old_pooled_mask)
        monkeypatch.setattr(exporter, "check_parity", _unchecked)
    micro = dataclasses.replace(TINY, audio_layers=1, dropout=0.0)
    ckpt, model = make_checkpoint(root / "audio.pt", micro, "audio")
    x = torch.tensor(np.random.default_rng(0).normal(0, 3, (1, 2050, micro.features.audio_dim)), dtype=torch.float32)
    seen = {}
    hook = model.head.register_forward_hook(lambda _m, inputs, _o: seen.update(h=inputs[0]))
    with torch.no_grad():
        model(x, torch.tensor([2050]))
        hook.remove()
        model.head.weight.mul_(100.0)
        model.head.bias.copy_(-(seen["h"] @ model.head.weight.T)[0])
    save_checkpoint(ckpt, model, TrainConfig(regime="audio"), valid={"a": {"average": {"mF1": 0.5}}})
    exporter.export_run(ckpt, root / "models", ("fp16",), log=lambda *_: None)
    monkeypatch.undo()
    return root / "models"


@pytest.fixture(scope="module")
def sensitised(tmp_path_factory):
    """(old models, new models): the same sensitised audio model exported before and after the fix."""
    with pytest.MonkeyPatch.context() as mp:
        old = _sensitised_audio_export(tmp_path_factory.mktemp("old"), True, mp)
    with pytest.MonkeyPatch.context() as mp:
        new = _sensitised_audio_export(tmp_path_factory.mktemp("new"), False, mp)
    return old, new


def test_verify_fails_on_the_old_graphs_and_passes_the_fixed_ones(sensitised):
    old, new = sensitised
    result = CliRunner().invoke(main, ["verify", str(old)])
    assert result.exit_code == 1
    assert "integer arithmetic in fp16" in result.output and "(Floor) reads fp16" in result.output
    result = CliRunner().invoke(main, ["verify", str(new)])
    assert result.exit_code == 0, result.output
    assert "| fp16 | fp16/avemo_a.onnx | onnx-reference |" in result.output


def test_padding_invariance_fails_the_old_graph_in_the_reference_and_not_in_onnxruntime(sensitised, monkeypatch):
    """Without the lint, the invariance check alone still fails the old fp16 graph, but only in the reference
    evaluator: ONNX Runtime (what the checks used before) passes it."""
    import avemo.runtime.backends.parity as parity

    old, new = sensitised
    manifest = load_manifest(old, verify=False)
    samples = parity_samples(manifest.features, ["a"])
    references = load_references(old / "parity.npz")
    monkeypatch.setattr(parity, "check_graph_numerics", lambda path: None)
    with pytest.raises(ParityError, match=r"move by .* when padded into a batch"):
        check_parity(old / "fp16", samples, references, "fp16")
    monkeypatch.setattr(parity, "open_onnx", lambda path, kind, threads=None, workload="": OrtBackend(path))
    hidden = check_parity(old / "fp16", samples, references, "fp16")
    assert hidden["a"]["padding_invariance"] < 1e-5
    report = load_manifest(new).data["parity"]["fp16"]["a"]
    assert report["runner"] == "onnx-reference" and report["padding_invariance"] <= INVARIANCE_TOLERANCE["fp16"]


def test_no_exported_graph_rounds_lengths_in_any_precision(colearn_export):
    """Every graph, every precision: no Floor/Ceil/Round at all (the model keeps lengths boolean)."""
    models, _, _ = colearn_export
    for precision in ("fp32", "fp16"):
        for modality in ("a", "v", "av"):
            model = onnx.load(str(load_manifest(models).graph_path(modality, precision)), load_external_data=False)
            assert not {n.op_type for n in model.graph.node} & {"Floor", "Ceil", "Round"}
            assert fp16_integer_arithmetic(model) == []


def test_parity_samples_reach_the_profile_corners(colearn_export):
    """30 s, the largest batch with ragged lengths, one face frame, the fp16-rounding lengths."""
    _, manifest, _ = colearn_export
    from avemo.config import PRESETS
    from avemo.contract import FACE_LENGTHS, PROFILE_BATCH

    features = PRESETS["tiny"].features
    samples = parity_samples(features, ["av"])["av"]
    audio = [s[AUDIO_LENGTHS].tolist() for s in samples]
    faces = [s[FACE_LENGTHS].tolist() for s in samples]
    assert max(s[AUDIO_FEATS].shape[1] for s in samples) == round(30 * features.frames_per_second)
    assert max(len(a) for a in audio) == PROFILE_BATCH[2] and len(set(max(audio, key=len))) > 1
    assert any(1 in f for f in faces)
    assert set(FP16_ROUNDING_FRAMES) <= {n for a in audio for n in a}
    for export in manifest["parity"].values():
        assert all(r["padding_invariance"] >= 0 and len(r["per_shape"]) == len(samples) for r in export.values())


@settings(max_examples=2, deadline=None, derandomize=True)
@given(length=st.integers(512, 749).map(lambda j: 4 * j + 2))  # even L > 2048 with L/2 odd: the bad roundings
@example(length=FP16_ROUNDING_FRAMES[0])
@example(length=FP16_ROUNDING_FRAMES[1])
def test_fp16_answer_does_not_change_when_padded_into_a_batch(colearn_export, length):
    """In the fp16-faithful reference, a clip alone and padded beside a 30-s clip: the same probabilities."""
    models, _, _ = colearn_export
    runner = ReferenceBackend(models / "fp16" / graph_file("a"))
    rng = np.random.default_rng(length)
    batch = rng.normal(0, 3, (2, 3000, TINY.features.audio_dim)).astype(np.float32)
    padded = runner.infer({AUDIO_FEATS: batch, AUDIO_LENGTHS: np.array([length, 3000])})
    alone = runner.infer({AUDIO_FEATS: batch[:1, :length], AUDIO_LENGTHS: np.array([length])})
    assert np.abs(alone - padded[:1]).max() <= INVARIANCE_TOLERANCE["fp16"]


@settings(max_examples=15, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 400), min_size=2, max_size=5), faces=st.lists(st.integers(1, 12), min_size=5))
def test_fp32_answers_do_not_change_when_padded_into_a_batch(colearn_export, lengths, faces):
    """ONNX Runtime (exact for fp32), A+V: every clip of a ragged batch gives its answer alone."""
    from avemo.contract import FACE_LENGTHS, FACES
    from avemo.runtime.backends.parity import case_inputs, padding_invariance

    models, _, _ = colearn_export
    faces = faces[: len(lengths)]
    batch = case_inputs(TINY.features, "av", [max(lengths) + 1, *lengths], [max(faces), *faces], seed=len(lengths))
    runner = OrtBackend(models / graph_file("av"))
    assert padding_invariance(runner, batch, runner.infer(batch)) <= INVARIANCE_TOLERANCE["fp32"]
    assert set(batch) == {AUDIO_FEATS, AUDIO_LENGTHS, FACES, FACE_LENGTHS}
