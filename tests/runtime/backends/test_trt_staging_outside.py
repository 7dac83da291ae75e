"""Issue 28 from the outside (a reviewer who did not write it): the merged uint8 faces, one staging pass and length
buckets through the TensorRT double where they meet: old float-faces models, bucket edges, batch limits, threads,
errors inside staging, close, NaN, Triton's TensorRT profiles, a bucket-trained autocast run exported."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from avemo.contract import FACES, graph_file
from avemo.errors import AvemoError
from tests.conftest import DISCRETE
from tests.conftest import build_with_double as _build


def _make_old(models) -> None:
    """The model folder in place as an older avemo exported it (float faces), parity references remade."""
    import shutil

    from avemo.io import sha256_file
    from avemo.runtime.backends import open_onnx
    from avemo.runtime.backends.parity import parity_samples, save_references
    from avemo.runtime.models.manifest import load_manifest
    from tests.export.test_faces_uint8 import _float_faces_graph

    shutil.rmtree(models / "fp16")
    data = json.loads((models / "manifest.json").read_text())
    for modality in ("v", "av"):
        _float_faces_graph(models / graph_file(modality))
        for spec in data["graphs"][modality]["inputs"]:
            if spec["name"] == FACES:
                spec["dtype"] = "float32"
    data["precisions"] = {"fp32": data["precisions"]["fp32"]}
    data["files"] = {rel: sha256_file(models / rel) for rel in data["files"] if not rel.startswith("fp16/")}
    (models / "manifest.json").write_text(json.dumps(data))
    manifest = load_manifest(models, verify=False)
    samples = parity_samples(manifest.features, manifest.modalities, manifest.faces_dtype)
    refs = {}
    for m in manifest.modalities:
        with open_onnx(manifest.graph_path(m)) as runner:
            refs[m] = [runner.infer(s) for s in samples[m]]
    save_references(models / "parity.npz", refs)
    data["files"] = {rel: sha256_file(models / rel) for rel in data["files"]}
    (models / "manifest.json").write_text(json.dumps(data))


def _clips(features, seconds, seed=0):
    from avemo.runtime.recognizer import ClipInput

    rng = np.random.default_rng(seed)
    s = features.face_size
    return [
        ClipInput(
            rng.normal(0, 3, (max(8, round(t * features.frames_per_second)), features.audio_dim)).astype(np.float32),
            rng.integers(0, 256, (max(1, round(t * features.fps)), 3, s, s), dtype=np.uint8),
        )
        for t in seconds
    ]


def _probs(results):
    return np.array([list(r.probs.values()) for r in results])


def test_old_float_faces_model_through_the_tensorrt_double(trt_double):
    """An old (float faces) model folder: engines built with the double, Recognizer on TensorRT answers as on
    ONNX Runtime, with the note."""
    from avemo.runtime.models.manifest import load_manifest
    from avemo.runtime.recognizer import Recognizer

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _make_old(manifest.root)
    manifest = load_manifest(manifest.root)
    assert manifest.faces_dtype == "float32"
    _build(manifest, "fp32")
    clips = _clips(manifest.features, [1.0, 4.0, 6.0, 12.0])
    with Recognizer(manifest.root, backend="trt") as trt, Recognizer(manifest.root, backend="ort") as ort:
        got, want = trt.infer(clips), ort.infer(clips)
        assert any("re-export" in n for n in got[0].notes)
    np.testing.assert_allclose(_probs(got), _probs(want), atol=1e-5)


def test_clips_straddling_the_bucket_boundary_and_batch_limits(trt_double):
    """4.9 s with 5.1 s in one batch; 1, 16 and 17 clips; TensorRT double against ONNX Runtime."""
    from avemo.runtime.recognizer import Recognizer

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32")
    with Recognizer(manifest.root, backend="trt") as trt, Recognizer(manifest.root, backend="ort") as ort:
        for seconds in ([4.9, 5.1], [5.0], [5.0, 5.0], [2.0] * 16, [3.0] * 17, [29.9, 0.2, 5.0]):
            clips = _clips(manifest.features, seconds, seed=len(seconds))
            np.testing.assert_allclose(_probs(trt.infer(clips)), _probs(ort.infer(clips)), atol=1e-5)


def test_a_clip_longer_than_the_profiles_is_refused_in_one_line(trt_double):
    from avemo.runtime.recognizer import Recognizer

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32")
    with Recognizer(manifest.root, backend="trt") as trt:
        clips = _clips(manifest.features, [31.0])
        with pytest.raises(AvemoError, match="window"):
            trt.infer(clips)
        assert trt.infer(_clips(manifest.features, [2.0]))  # still usable


@pytest.mark.parametrize("gpu", [DISCRETE, None], ids=["discrete", "jetson-mapped"])
def test_three_threads_on_one_recognizer_with_the_tensorrt_double(trt_double, gpu):
    """Two staging slots, three threads calling infer concurrently, on a discrete GPU and on a Jetson (mapped
    memory: the engine reads the slot itself): every answer is its own batch's."""
    from avemo.runtime.recognizer import Recognizer

    manifest, _, _ = trt_double("10.3.0", gpu)  # None: the double's default, an Orin Nano (integrated)
    _build(manifest, "fp32")
    batches = [_clips(manifest.features, [1.0 + k, 2.0 + 3 * k, 6.0], seed=10 + k) for k in range(6)]
    with Recognizer(manifest.root, backend="trt") as trt:
        want = [_probs(trt.infer(b)) for b in batches]
        got: list[tuple[int, np.ndarray]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(3)

        def work(k: int) -> None:
            try:
                start.wait(10)
                for _ in range(3):
                    for j in range(k, len(batches), 3):
                        got.append((j, _probs(trt.infer(batches[j]))))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors and len(got) == 3 * len(batches)
    for j, run in got:
        np.testing.assert_allclose(run, want[j], atol=1e-6)


def test_an_exception_inside_staging_releases_its_slot(trt_double):
    from avemo.runtime.backends.parity import sample_inputs
    from avemo.runtime.backends.trt import TrtBackend

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32", ["a"])
    inputs = sample_inputs(manifest.features, "a", 2, 2.0, 1)
    with TrtBackend(manifest, "a", "fp32") as engine:
        for _ in range(3):
            with pytest.raises(RuntimeError):
                with engine.staging({k: v.shape for k, v in inputs.items()}):
                    raise RuntimeError("boom")
        out: list = []
        t = threading.Thread(target=lambda: out.append(engine.infer(inputs)), daemon=True)
        t.start()
        t.join(30)
        assert out, "infer blocked: a staging slot was not given back"


def test_close_while_another_thread_stages_refuses_the_run(trt_double):
    from avemo.runtime.backends import write_padded
    from avemo.runtime.backends.parity import sample_inputs
    from avemo.runtime.backends.trt import TrtBackend

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32", ["a"])
    inputs = sample_inputs(manifest.features, "a", 2, 2.0, 1)
    engine = TrtBackend(manifest, "a", "fp32")
    with engine.staging({k: v.shape for k, v in inputs.items()}) as staged:
        engine.close()
        for name, array in inputs.items():
            write_padded(staged.arrays[name], array)
        with pytest.raises(AvemoError, match="closed"):
            staged.run()


def test_nan_audio_through_the_staging_path_is_refused_in_one_line(trt_double):
    from avemo.runtime.recognizer import Recognizer

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32")
    with Recognizer(manifest.root, backend="trt") as trt:
        clips = _clips(manifest.features, [2.0, 3.0])
        clips[1].audio[5, 3] = np.nan
        with pytest.raises(AvemoError, match=r"^clip 1: audio contain NaN or inf$"):
            trt.infer(clips)


def test_float_faces_through_backend_infer_are_refused_on_tensorrt(trt_double):
    from avemo.runtime.backends.parity import sample_inputs
    from avemo.runtime.backends.trt import TrtBackend

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32", ["v"])
    inputs = sample_inputs(manifest.features, "v", 2, 2.0, 1, "float32")
    with TrtBackend(manifest, "v", "fp32") as engine:
        with pytest.raises(AvemoError, match="faces is float32, the graph takes uint8"):
            engine.infer(inputs)


def test_a_triton_tensorrt_repository_makes_every_bucket_profile_available(trt_double, tmp_path):
    """Engines now carry one profile per length bucket, profile 0 taking clips up to 5 s. Triton's TensorRT
    backend uses only the first profile unless instance_group lists ``profile`` (model_config.proto: "If not
    specified, the server will select the first optimization profile by default"): the repository must list
    every profile of the engine, or Triton refuses every clip longer than 5 s."""
    from avemo.runtime.serving.repository import export_triton

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    paths = _build(manifest, "fp32")
    count = len(json.loads(paths[0].with_suffix(".json").read_text())["profiles"])
    assert count == 2
    folders = export_triton(manifest.root, tmp_path / "repo", backend="tensorrt", precision="fp32")
    for folder in folders.values():
        text = (folder / "config.pbtxt").read_text()
        assert 'profile: [ "0", "1" ]' in text.replace("'", '"') or 'profile: ["0", "1"]' in text, text


def test_verify_and_doctor_on_an_old_float_faces_model(trt_double, tmp_path):
    from click.testing import CliRunner

    from avemo.cli import main

    manifest, _, _ = trt_double("10.3.0", DISCRETE)
    _make_old(manifest.root)
    result = CliRunner().invoke(main, ["verify", str(manifest.root)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main, ["doctor", str(manifest.root), "--precision", "fp32", "--iters", "2", "--out", str(tmp_path / "d")]
    )
    assert result.exit_code == 0, result.output


def test_a_bucket_trained_fp16_autocast_run_exports_within_parity(tiny_cache, micro_config, tmp_path):
    """Trained with length buckets, the masked BatchNorm and fp16 autocast on CPU (scaled loss): the running
    statistics come from real frames only; the export matches torch within fp32's tolerance (export_run
    checks parity), and the ONNX graph on uint8 faces answers as the torch model on pixels / 255."""
    import torch

    from avemo.config import TrainConfig, model_config_for_regime
    from avemo.contract import BEST_CHECKPOINT
    from avemo.export.exporter import export_run
    from avemo.runtime.backends import open_onnx
    from avemo.runtime.backends.parity import sample_inputs
    from avemo.train.checkpoint import load_model
    from avemo.train.speed import LoopOptions
    from avemo.train.trainer import train

    cfg = model_config_for_regime(micro_config, "colearn")
    tcfg = TrainConfig(regime="colearn", batch_size=8, lr=2e-3, max_epochs=1, patience=5)
    train(tiny_cache, tmp_path / "run", cfg, tcfg, loop=LoopOptions(precision="fp16"), progress=False)
    export_run(tmp_path / "run" / BEST_CHECKPOINT, tmp_path / "models", (), log=lambda *_: None)
    from avemo.runtime.models.manifest import load_manifest

    manifest = load_manifest(tmp_path / "models")
    model, _ = load_model(tmp_path / "run" / BEST_CHECKPOINT)
    model.eval()
    inputs = sample_inputs(manifest.features, "av", 3, 1.2, 5)
    with open_onnx(manifest.graph_path("av")) as runner:
        got = runner.infer(inputs)
    with torch.inference_mode():
        want = torch.sigmoid(
            model(
                audio=torch.from_numpy(inputs["audio_feats"]),
                audio_lengths=torch.from_numpy(inputs["audio_lengths"]),
                faces=torch.from_numpy(inputs["faces"]).float() / 255,
                face_lengths=torch.from_numpy(inputs["face_lengths"]),
            )
        ).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_five_second_windows_of_a_file_stay_in_the_live_profile(trt_double, tmp_path):
    """DEPLOYMENT: "a live window is always one shape": 5-s windows (`--window 5`) run in profile 0, never
    switching to the 30-s profile, and answer as ONNX Runtime does."""
    from avemo.runtime.media.sample import write_media
    from avemo.runtime.recognizer import Recognizer

    manifest, tensorrt, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32")
    media = write_media(tmp_path / "clip.mp4", seconds=12.0)
    tensorrt.PROFILE_SWITCHES.clear()
    with Recognizer(manifest.root, backend="trt") as trt, Recognizer(manifest.root, backend="ort") as ort:
        got = list(trt.stream(media, 5.0, 2.5))
        want = list(ort.stream(media, 5.0, 2.5))
        shapes = {m: b.profile for m, b in trt.backends.items()}
    assert tensorrt.PROFILE_SWITCHES == [], (tensorrt.PROFILE_SWITCHES, shapes)
    assert len(got) == len(want) >= 3
    np.testing.assert_allclose(_probs(got), _probs(want), atol=1e-5)
