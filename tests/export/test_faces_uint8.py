"""Faces cross the host as uint8 (issue 28 item 1): every graph casts and scales them itself, fp32 up to the
first conv in fp16 graphs; models exported before (float faces) still run, scaled on the host, with a note."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from avemo.contract import FACES, PARITY_TOLERANCE, graph_file
from avemo.errors import AvemoError
from avemo.io import sha256_file
from avemo.runtime.models.manifest import load_manifest

UINT8, FLOAT, FLOAT16 = onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def test_every_graph_takes_faces_as_uint8_and_casts_them_first(colearn_export):
    models, manifest, _ = colearn_export
    assert {s["dtype"] for m in ("v", "av") for s in manifest["graphs"][m]["inputs"] if s["name"] == FACES} == {"uint8"}
    for precision in ("fp32", "fp16"):
        for modality in ("a", "v", "av"):
            graph = onnx.load(str(load_manifest(models).graph_path(modality, precision)), load_external_data=False)
            types = {i.name: i.type.tensor_type.elem_type for i in graph.graph.input}
            assert (FACES in types) == ("v" in modality)
            if FACES not in types:
                continue
            assert types[FACES] == UINT8, (precision, modality)
            # TensorRT reads a uint8 input only through a conversion to float: the Cast is its one reader.
            readers = [n for n in graph.graph.node if FACES in n.input]
            assert [(n.op_type, _cast_to(n)) for n in readers] == [("Cast", FLOAT)], (precision, modality)


def test_the_fp16_graph_keeps_the_faces_head_in_fp32_up_to_the_first_conv(colearn_export):
    from avemo.export.fp16 import input_head

    models, _, _ = colearn_export
    for modality in ("v", "av"):
        graph = onnx.load(str(load_manifest(models).graph_path(modality, "fp16")), load_external_data=False)
        head, conv = input_head(graph, FACES)
        assert conv is not None
        ops = [n.op_type for n in head]
        assert ops[0] == "Cast" and "Div" in ops and "Sub" in ops  # cast, /255, ImageNet mean and std
        casts = [(n, _cast_to(n)) for n in head if n.op_type == "Cast"]
        # fp32 throughout (no round trip through fp16); the one cast to fp16 makes the conv's own input.
        assert [to for _, to in casts] == [FLOAT, FLOAT16], modality
        assert casts[-1][0].output[0] == conv.input[0]
        inits = {t.name: t.data_type for t in graph.graph.initializer}
        constants = [name for n in head if n.op_type in ("Div", "Sub") for name in n.input if name in inits]
        assert constants and {inits[c] for c in constants} == {FLOAT}, modality


def test_parity_samples_of_an_old_export_are_the_floats_the_pixels_are_made_from(colearn_export):
    from avemo.runtime.backends.parity import parity_samples

    features = load_manifest(colearn_export[0]).features
    pixels, floats = (parity_samples(features, ["v"], dtype)["v"] for dtype in ("uint8", "float32"))
    for new, old in zip(pixels, floats, strict=True):
        assert new[FACES].dtype == np.uint8 and old[FACES].dtype == np.float32
        np.testing.assert_array_equal(new[FACES], (old[FACES] * 256).astype(np.uint8))
        assert new[FACES].max() == 255 and new[FACES].min() == 0


def _float_faces_graph(path) -> None:
    """Rewrite a graph as an older export made it: faces float32 in [0, 1], no Cast or /255 of its own."""
    graph = onnx.load(str(path), load_external_data=False)
    cast = next(n for n in graph.graph.node if n.op_type == "Cast" and FACES in n.input)
    scale = next(n for n in graph.graph.node if n.op_type == "Div" and cast.output[0] in n.input)
    for node in graph.graph.node:
        node.input[:] = [FACES if name in (cast.output[0], scale.output[0]) else name for name in node.input]
    graph.graph.node.remove(cast)
    graph.graph.node.remove(scale)
    next(i for i in graph.graph.input if i.name == FACES).type.tensor_type.elem_type = FLOAT
    onnx.save(graph, str(path))


@pytest.fixture
def old_models(colearn_export, tmp_path):
    """The tiny model as an older avemo exported it: fp32 graphs that take float faces, manifest to match."""
    old = tmp_path / "old"
    shutil.copytree(colearn_export[0], old)
    shutil.rmtree(old / "fp16")
    data = json.loads((old / "manifest.json").read_text())
    for modality in ("v", "av"):
        _float_faces_graph(old / graph_file(modality))
        for spec in data["graphs"][modality]["inputs"]:
            if spec["name"] == FACES:
                spec["dtype"] = "float32"
    data["precisions"] = {"fp32": data["precisions"]["fp32"]}
    data["files"] = {rel: sha256_file(old / rel) for rel in data["files"] if not rel.startswith("fp16/")}
    (old / "manifest.json").write_text(json.dumps(data))
    return old


def _clips(features, n: int = 2) -> list:
    from avemo.runtime.recognizer import ClipInput

    rng = np.random.default_rng(3)
    s = features.face_size
    return [
        ClipInput(
            rng.normal(0, 3, (100 + 40 * i, features.audio_dim)).astype(np.float32),
            rng.integers(0, 256, (4 + 3 * i, 3, s, s), dtype=np.uint8),
        )
        for i in range(n)
    ]


def test_an_old_float_faces_model_still_answers_scaled_on_the_host_with_a_note(colearn_export, old_models):
    from avemo.runtime.recognizer import ClipInput, Recognizer

    graph = onnx.load(str(old_models / graph_file("v")), load_external_data=False)
    assert next(i for i in graph.graph.input if i.name == FACES).type.tensor_type.elem_type == FLOAT
    assert load_manifest(old_models).faces_dtype == "float32"
    with Recognizer(colearn_export[0]) as new, Recognizer(old_models) as old:
        clips = _clips(new.features)
        got, want = old.infer(clips), new.infer(clips)
        visual = [ClipInput(c.audio[:0], c.faces) for c in clips]  # the V graph
        got_v, want_v = old.infer(visual), new.infer(visual)
    for a, b in zip([*got, *got_v], [*want, *want_v], strict=True):
        assert a.modality == b.modality
        np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), rtol=0, atol=1e-6)
        assert [n for n in a.notes if "re-export" in n] == [
            f"{old_models} takes faces as float32 (exported by an older avemo): they are scaled on the host; "
            "re-export the model (`avemo export`) to take faces as uint8"
        ]  # once per result
        assert not b.notes


def test_float_faces_given_to_the_recognizer_are_refused_in_one_line(colearn_export):
    """[0, 1] or [0, 255]? A float array is refused, not guessed at (a cast would make [0, 1] all zeros)."""
    from avemo.runtime.recognizer import ClipInput, Recognizer

    with Recognizer(colearn_export[0]) as recognizer:
        clip = _clips(recognizer.features, 1)[0]
        floats = ClipInput(clip.audio, clip.faces.astype(np.float32) / 255)
        with pytest.raises(AvemoError, match=r"^clip 0: faces are float32; the model takes uint8 pixels 0-255$"):
            recognizer.infer([floats])
        assert recognizer.infer([clip])[0].modality == "av"


def test_calibrating_an_old_export_asks_for_a_new_one(old_models, tiny_cache):
    from avemo.calibration.calibrate import calibrate

    with pytest.raises(AvemoError, match="take float32 faces; re-export it before calibrating"):
        calibrate(old_models, tiny_cache, samples=4, log=lambda *_: None)


def test_the_tensorrt_double_parses_uint8_faces_only_into_a_cast(trt_double):
    """TensorRT converts a uint8 network input to float before any other layer reads it; the double's parser
    refuses a graph whose Shape reads the uint8 faces (what torch's export wrote before ``faces_through_cast``),
    and an engine built from avemo's graph takes faces as UINT8 and answers as ONNX Runtime does."""
    from avemo.runtime.backends import open_backend
    from avemo.runtime.backends.engines import buffer_bytes, profiles
    from avemo.runtime.backends.parity import sample_inputs
    from tests.conftest import build_with_double

    manifest, trt, _ = trt_double("10.3.0")
    path = manifest.graph_path("v")
    graph = onnx.load(str(path), load_external_data=False)
    cast = graph.graph.node[0]
    shape = next(n for n in graph.graph.node if n.op_type == "Shape" and cast.output[0] in n.input)
    shape.input[0] = FACES
    bad = path.with_name("shape_reads_faces.onnx")
    onnx.save(graph, str(bad))
    network = trt.Builder(trt.Logger()).create_network(0)
    parser = trt.OnnxParser(network, trt.Logger())
    assert not parser.parse_from_file(str(bad))
    assert "faces: a UINT8 input read by Shape" in parser.get_error(0).desc()
    assert trt.OnnxParser(network, trt.Logger()).parse_from_file(str(path))
    assert {t.name: t.dtype for t in network.inputs}[FACES] == trt.DataType.UINT8
    bad.unlink()
    assert buffer_bytes(manifest, "v")[FACES] == np.prod(profiles(manifest, "v")[FACES][2])  # a byte a pixel
    build_with_double(manifest, "fp32", ["v"])
    inputs = sample_inputs(manifest.features, "v", 3, 2.0, seed=11)
    with open_backend(manifest, "v", "fp32", "trt") as engine, open_backend(manifest, "v", "fp32", "ort") as ort:
        assert {s.name: s.dtype for s in engine.input_specs}[FACES] == np.uint8
        np.testing.assert_allclose(engine.infer(inputs), ort.infer(inputs), rtol=0, atol=PARITY_TOLERANCE["fp32"])
