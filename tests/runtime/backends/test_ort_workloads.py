"""ONNX Runtime's spin-waiting per workload (``ort.SPINNING``): "inference" where only graphs run (profiler,
Triton's graph models, parity, calibration), "pipeline" where decoding and face detection run beside them (the
Recognizer, YuNet). Read back from the sessions themselves, as ONNX Runtime was given them, under a table where
the two workloads differ (the shipped one has both off, as measured)."""

from __future__ import annotations

import json
import sys
import types

import pytest

from avemo.errors import AvemoError
from avemo.runtime.backends import ort
from avemo.runtime.models.manifest import load_manifest

KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def _spins(session) -> bool:
    """Whether a live ONNX Runtime session was built with spinning on (both pools alike)."""
    values = {session.get_session_options().get_session_config_entry(k) for k in KEYS}
    assert len(values) == 1, values
    return values == {"1"}


@pytest.fixture(autouse=True)
def telling(monkeypatch):
    """A table where the workloads differ: a session's setting then says which workload opened it."""
    monkeypatch.setattr(ort, "SPINNING", {"pipeline": False, "inference": True})


def test_the_measured_table_keeps_spinning_off_everywhere(monkeypatch):
    monkeypatch.undo()
    assert ort.SPINNING == {"pipeline": False, "inference": False}  # docs/BENCHMARKS.md: on was 1.1-3.1x slower


@pytest.fixture
def opened(monkeypatch):
    """(graph path, whether its session spins) of every OrtBackend opened during the test, in order."""
    backends = []
    init = ort.OrtBackend.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        backends.append((self.path, _spins(self.session)))

    monkeypatch.setattr(ort.OrtBackend, "__init__", spy)
    return backends


def test_session_options_per_workload():
    for workload, spin in (("pipeline", "0"), ("inference", "1")):
        options = ort.session_options(2, workload)
        assert [options.get_session_config_entry(k) for k in KEYS] == [spin, spin]
    assert ort.session_options().get_session_config_entry(KEYS[0]) == "0"  # unnamed: the safe setting
    with pytest.raises(AvemoError, match="unknown workload 'batch'; expected one of pipeline, inference"):
        ort.session_options(None, "batch")


def test_the_recognizer_and_its_face_detector_do_not_spin(models, opened):
    from avemo.runtime.recognizer import Recognizer

    with Recognizer(models, threads=1) as recognizer:
        assert sorted(recognizer.backends) == sorted(path.stem.removeprefix("avemo_") for path, _ in opened)
        assert [spins for _, spins in opened] == [False] * len(opened)
        assert recognizer.faces is not None
        assert not _spins(recognizer.faces.detector._session)


def test_the_profiler_parity_and_calibration_spin(colearn_export, tiny_cache, opened):
    from avemo.calibration.report import predict_graph
    from avemo.contract import graph_file
    from avemo.runtime.backends.parity import check_parity, load_references, parity_samples
    from avemo.runtime.profile.cases import load_runner
    from avemo.train.cache import CacheSplit

    models = colearn_export[0]
    manifest = load_manifest(models)
    load_runner(manifest, "ort", "fp32", "av", 1, None).close()
    samples = parity_samples(manifest.features, ["a"])
    check_parity(models, samples, load_references(models / "parity.npz"), "fp32", 1)
    predict_graph(manifest.graph_path("v"), CacheSplit(tiny_cache, "valid"), "v", threads=1)
    assert [(path.name, spins) for path, spins in opened] == [
        (graph_file("av"), True),
        (graph_file("a"), True),
        (graph_file("v"), True),
    ]


def test_tritons_graph_models_spin_and_its_media_model_does_not(colearn_export, tmp_path, monkeypatch, opened):
    """The graph models run graphs alone; avemo_media decodes beside them (a Recognizer)."""
    from avemo.runtime.serving import triton_model

    def family(**kwargs):  # the Python backend's metrics, as _Failures makes them
        return types.SimpleNamespace(Metric=lambda labels: object())

    family.COUNTER = 0
    fake = types.ModuleType("triton_python_backend_utils")
    fake.MetricFamily = family
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / triton_model.MODELS_DIR).symlink_to(colearn_export[0])
    args = {"model_repository": str(tmp_path), "model_version": "1", "model_config": json.dumps({})}
    triton_model.GraphModel().initialize({**args, "model_name": "avemo_av"})
    assert [(path.name, spins) for path, spins in opened] == [("avemo_av.onnx", True)]
    media = triton_model.MediaModel()
    media.initialize({**args, "model_name": "avemo_media"})
    assert [spins for _, spins in opened[1:]] == [False] * len(media.recognizer.backends)
    media.recognizer.close()
    media.scratch.cleanup()
