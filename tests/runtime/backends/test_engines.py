"""TensorRT engine bookkeeping that needs no TensorRT: names, profiles, buffers, version rules, mismatch refusal.

The builder and runner themselves are tested through the TensorRT / pycuda
test doubles in tests/runtime/backends/test_trt_run.py and test_trt_build.py.
"""

import importlib.util

import numpy as np
import pytest

from avemo.contract import PROFILE_BUCKETS
from avemo.errors import AvemoError
from avemo.runtime.backends.engines import (
    Device,
    bucket_profiles,
    buffer_bytes,
    build_flags,
    check_engine,
    engine_path,
    pick_profile,
    profiles,
    write_sidecar,
)
from avemo.runtime.models.manifest import load_manifest

ORIN = Device("Orin (nvgpu)", (8, 7), "10.3.0")
H100 = Device("NVIDIA H100 80GB HBM3", (9, 0), "11.0.0")


def test_engine_path_names_gpu_compute_capability_and_version(tmp_path):
    path = engine_path(tmp_path, ORIN, "av", "fp16")
    assert path == tmp_path / "engines" / "orin-nvgpu-sm87-trt10.3.0" / "avemo_av_fp16.engine"
    assert engine_path(tmp_path, H100, "a", "int8").parent.name == "nvidia-h100-80gb-hbm3-sm90-trt11.0.0"


@pytest.mark.parametrize(
    ("version", "precision", "expected"),
    [
        ("10.3.0", "fp32", (["STRONGLY_TYPED"], [], ["TF32"])),
        ("10.13.0.35", "fp16", (["STRONGLY_TYPED"], [], [])),
        ("10.3.0", "int8", (["STRONGLY_TYPED"], [], [])),
        ("11.0.0", "fp16", (["STRONGLY_TYPED"], [], [])),
        ("11.2.1", "fp32", (["STRONGLY_TYPED"], [], ["TF32"])),
    ],
)
def test_every_network_is_strongly_typed_and_fp32_clears_tf32(version, precision, expected):
    assert build_flags(version, precision) == expected


def test_unsupported_versions_and_precisions_are_refused():
    with pytest.raises(AvemoError, match=r"TensorRT 8\.6\.1 is not supported; use TensorRT 10\.x or 11\.x.*8\.6"):
        build_flags("8.6.1", "fp16")
    with pytest.raises(AvemoError, match="unknown engine precision"):
        build_flags("10.3.0", "bf16")


def test_profiles_and_buffers_come_from_the_manifest(colearn_export):
    manifest = load_manifest(colearn_export[0])
    prof = profiles(manifest, "av")
    axes = manifest.data["profiles"]
    size = manifest.features.face_size
    assert prof["audio_feats"] == (
        (axes["batch"][0], axes["audio_frames"][0], 240),
        (axes["batch"][1], axes["audio_frames"][1], 240),
        (axes["batch"][2], axes["audio_frames"][2], 240),
    )
    assert prof["faces"][2] == (16, axes["face_frames"][2], 3, size, size)
    assert prof["face_lengths"] == ((1,), (4,), (16,))
    sizes = buffer_bytes(manifest, "av")
    assert sizes["audio_feats"] == 16 * axes["audio_frames"][2] * 240 * 4
    assert sizes["audio_lengths"] == 16 * 8  # int64
    assert sizes["probs"] == 16 * 6 * 4
    assert sizes["faces"] == np.prod(prof["faces"][2])  # uint8: a byte a pixel
    # Every shape in the profile fits its buffer.
    itemsize = {"faces": 1, "audio_lengths": 8, "face_lengths": 8}
    for name, (lo, _, hi) in prof.items():
        assert np.prod(lo) <= np.prod(hi) and sizes[name] >= np.prod(hi) * itemsize.get(name, 4)


def _engine_with_sidecar(models, tmp_path):
    """A stand-in engine file for the Orin with the sidecar `avemo build` writes."""
    manifest = load_manifest(models)
    engine = engine_path(tmp_path, ORIN, "av", "fp16")
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"serialized engine")
    write_sidecar(engine, ORIN, manifest, "av", "fp16")
    return manifest, engine


def test_engine_built_elsewhere_is_refused_with_the_rebuild_command(colearn_export, tmp_path):
    manifest, engine = _engine_with_sidecar(colearn_export[0], tmp_path)
    meta = check_engine(engine, ORIN)
    assert (
        meta["source"] == "fp16/avemo_av.onnx" and meta["source_sha256"] == manifest.data["files"]["fp16/avemo_av.onnx"]
    )
    assert meta["weights_sha256"] == manifest.data["files"]["fp16/avemo.weights"]
    with pytest.raises(
        AvemoError, match=r"built for Orin \(nvgpu\) \(sm87, TensorRT 10\.3\.0\) but this is .*avemo build"
    ):
        check_engine(engine, H100)
    with pytest.raises(AvemoError, match="rebuild it here"):
        check_engine(engine, Device("Orin (nvgpu)", (8, 7), "10.7.0"))
    with pytest.raises(AvemoError, match="no engine"):
        check_engine(engine_path(tmp_path, ORIN, "a", "fp16"), ORIN)


def test_stale_engine_is_refused_with_the_rebuild_command(colearn_export, tmp_path):
    """An engine whose graph, weights or profile changed since the build (re-export, re-calibration)."""
    import json

    manifest, engine = _engine_with_sidecar(colearn_export[0], tmp_path)
    assert check_engine(engine, ORIN, manifest)["modality"] == "av"
    sidecar = engine.with_suffix(".json")
    for key, value in (("weights_sha256", "0" * 64), ("source_sha256", "1" * 64), ("profiles", [])):
        meta = json.loads(sidecar.read_text())
        saved, meta[key] = meta[key], value
        sidecar.write_text(json.dumps(meta))
        with pytest.raises(AvemoError, match=r"stale.*rebuild it: avemo build .* --precision fp16"):
            check_engine(engine, ORIN, manifest)
        meta[key] = saved
        sidecar.write_text(json.dumps(meta))


def test_buckets_give_a_live_profile_and_a_file_profile(colearn_export):
    """Item 3: <= 5 s tuned for one clip, <= 30 s for the batch limit; both take the whole batch range."""
    manifest = load_manifest(colearn_export[0])
    f, axes = manifest.features, manifest.data["profiles"]
    live, files = bucket_profiles(manifest, "av", 4)
    five_s = round(5 * f.frames_per_second)
    assert PROFILE_BUCKETS == ((5.0, 1), (30.0, None))
    assert live["audio_feats"] == ((1, 8, 240), (1, five_s, 240), (4, five_s, 240))
    assert live["faces"][1][:2] == (1, 15) and live["faces"][2][:2] == (4, 15)
    assert files["audio_feats"] == ((1, 8, 240), (4, axes["audio_frames"][2], 240), (4, axes["audio_frames"][2], 240))
    assert files["face_lengths"] == ((1,), (4,), (4,))
    assert bucket_profiles(manifest, "av", 4, None) == [profiles(manifest, "av", 4)]  # engines before buckets


def test_a_batch_is_padded_within_the_first_bucket_that_takes_it(colearn_export):
    manifest = load_manifest(colearn_export[0])
    limits = bucket_profiles(manifest, "av")
    step = round(5 * manifest.features.frames_per_second)

    def shapes(batch, audio, faces):
        return {"audio_feats": (batch, audio, 240), "audio_lengths": (batch,), "faces": (batch, faces, 3, 48, 48),
                "face_lengths": (batch,)}  # fmt: skip

    assert pick_profile(limits, shapes(1, 3, 1)) == (0, shapes(1, step, 15))  # a live window: always one shape
    assert pick_profile(limits, shapes(1, step, 15)) == (0, shapes(1, step, 15))
    assert pick_profile(limits, shapes(3, step + 1, 2)) == (1, shapes(3, 2 * step, 15))  # 5 s steps in 30 s
    assert pick_profile(limits, shapes(16, 6 * step - 7, 90)) == (1, shapes(16, 6 * step, 90))
    single = [profiles(manifest, "av")]  # an engine built before buckets: padded to its minimum only
    assert pick_profile(single, shapes(2, 3, 1)) == (0, shapes(2, 8, 1))
    assert pick_profile(single, shapes(2, 777, 20)) == (0, shapes(2, 777, 20))
    with pytest.raises(AvemoError, match="no engine profile takes"):
        pick_profile(limits, shapes(1, 6 * step + 1, 1))


def test_an_engine_built_before_buckets_or_with_other_buckets_reads_as_built(colearn_export, tmp_path):
    import json

    manifest, engine = _engine_with_sidecar(colearn_export[0], tmp_path)
    sidecar = engine.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    assert meta["buckets"] == [[5.0, 1], [30.0, None]] and len(meta["profiles"]) == 2
    old = {k: v for k, v in meta.items() if k not in ("buckets", "profiles")}
    old["profile"] = {k: list(map(list, v)) for k, v in profiles(manifest, "av").items()}
    sidecar.write_text(json.dumps(old))
    assert "buckets" not in check_engine(engine, ORIN, manifest)
    write_sidecar(engine, ORIN, manifest, "av", "fp16", buckets=((10.0, 2), (30.0, None)))
    assert check_engine(engine, ORIN, manifest)["buckets"] == [[10.0, 2], [30.0, None]]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed (no GPU here)")
def test_real_tensorrt_version_is_supported():
    import tensorrt

    build_flags(tensorrt.__version__, "fp16")
