"""One interface, one input check: every backend kind (ONNX Runtime, the fp16 reference evaluator, TensorRT
through its doubles) is a ``Backend``, refuses the same bad inputs with the same words, answers alike on good
ones, and refuses to run once closed."""

from __future__ import annotations

import numpy as np
import pytest

from avemo.errors import AvemoError
from avemo.runtime.backends import Backend, InputSpec, check_inputs, open_backend, open_onnx, resolve_backend
from avemo.runtime.backends.parity import sample_inputs
from avemo.runtime.models.manifest import load_manifest
from tests.conftest import build_with_double


def _bad_inputs(good: dict[str, np.ndarray]) -> list[tuple[dict[str, np.ndarray], str]]:
    """(inputs, what the error must say) for each rule of ``check_inputs``."""
    faces, lengths = good["faces"], good["face_lengths"]
    return [
        ({k: v for k, v in good.items() if k != "faces"}, r"missing inputs \['faces'\]"),
        ({**good, "face_lengths": lengths.astype(np.float32)}, "face_lengths is float32, the graph takes int64"),
        # Float faces: in [0, 1] or [0, 255]? Refused rather than guessed (a cast would make [0, 1] all 0 and 1).
        ({**good, "faces": faces / np.float32(255)}, "faces is float32, the graph takes uint8"),
        ({**good, "faces": faces[0]}, "faces has 4 dimensions, the graph takes 5"),
        ({**good, "faces": faces[:1]}, "inputs disagree on the batch size"),
        ({**good, "face_lengths": lengths * 0}, r"face_lengths \[0, 0\] must lie in 1\.\."),
        ({**good, "face_lengths": lengths + faces.shape[1]}, f"must lie in 1..{faces.shape[1]}"),
        ({**good, "faces": faces[..., 1:, :]}, f"faces has {faces.shape[3] - 1} on axis 3, the graph takes"),
        ({k: v[:0] for k, v in good.items()}, "holds no clips"),
    ]


def test_every_backend_kind_keeps_the_interface_and_refuses_bad_inputs_alike(trt_double):
    manifest, _, _ = trt_double("10.3.0")
    build_with_double(manifest, "fp32", ["v"])
    good = sample_inputs(manifest.features, "v", 2, 1.0, seed=3)
    backends = {
        "ort": open_backend(manifest, "v", "fp32", "ort"),
        "reference": open_onnx(manifest.graph_path("v", "fp16"), "reference"),
        "trt": open_backend(manifest, "v", "fp32", "trt"),
    }
    answers = {}
    for name, backend in backends.items():
        with backend:
            assert isinstance(backend, Backend), name
            assert backend.input_names == ["faces", "face_lengths"], name
            for inputs, said in _bad_inputs(good):
                with pytest.raises(AvemoError, match=said):
                    backend.infer(inputs)
            answers[name] = backend.infer({**good, "face_lengths": good["face_lengths"].astype(np.int32)})  # same kind
        with pytest.raises(AvemoError, match="the backend is closed"):
            backend.infer(good)
    np.testing.assert_allclose(answers["trt"], answers["ort"], atol=1e-5)
    np.testing.assert_allclose(answers["reference"], answers["ort"], atol=2e-2)  # fp16 graph vs fp32


def test_check_inputs_bounds_by_the_profile_and_names_non_finite_clips():
    spec = InputSpec("audio_feats", np.dtype(np.float32), (None, None, 4), low=(1, 8, 4), high=(4, 100, 4))
    lengths = InputSpec("audio_lengths", np.dtype(np.int64), (None,))
    audio = np.zeros((2, 120, 4), np.float32)
    with pytest.raises(AvemoError, match=r"120 frames, more than the engine's profile takes \(100\).*--window"):
        check_inputs({"audio_feats": audio, "audio_lengths": np.array([5, 5])}, (spec, lengths), "g")
    with pytest.raises(AvemoError, match="5 clips per batch, more than the engine's profile takes"):
        check_inputs({"audio_feats": np.zeros((5, 10, 4), np.float32), "audio_lengths": np.ones(5, int)}, (spec,), "g")
    poisoned = np.zeros((3, 10, 4), np.float32)
    poisoned[1, 2, 0] = np.nan
    ok = {"audio_feats": poisoned, "audio_lengths": np.array([10, 10, 10], np.int32)}
    free = (InputSpec("audio_feats", np.dtype(np.float32), (None, None, 4)), lengths)
    assert check_inputs(ok, free, "g")["audio_lengths"].dtype == np.int64  # cast within its kind; NaN not looked for
    with pytest.raises(AvemoError, match=r"audio_feats holds NaN or Inf \(clips \[1\]\)"):
        check_inputs(ok, free, "g", finite=True)
    huge = {**ok, "audio_feats": np.full((3, 10, 4), 1e300)}  # finite in float64, Inf once cast to float32
    with pytest.raises(AvemoError, match="holds NaN or Inf"), np.errstate(over="ignore"):
        check_inputs(huge, free, "g", finite=True)


def test_unknown_backend_kinds_are_refused_by_name(colearn_export):
    manifest = load_manifest(colearn_export[0])
    with pytest.raises(AvemoError, match="unknown backend 'gpu'"):
        resolve_backend("gpu", manifest)
    with pytest.raises(AvemoError, match="resolve 'auto' with resolve_backend"):
        open_backend(manifest, "a", "fp32", "auto")
    with pytest.raises(AvemoError, match="unknown ONNX backend 'tvm'"):
        open_onnx(manifest.graph_path("a"), "tvm")
