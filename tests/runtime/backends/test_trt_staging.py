"""Issue #28 items 2 and 3 on the TensorRT path, through the doubles (tests/fakes): a batch is written once,
straight into page-locked memory and outside the shared activation area's lock; engines carry one
optimisation profile per length bucket and each batch runs in the first that takes it, padded within it."""

from __future__ import annotations

import json
import threading
import tracemalloc

import numpy as np
import pytest

from avemo.contract import INVARIANCE_TOLERANCE
from avemo.runtime.backends import write_padded
from avemo.runtime.backends.engines import bucket_profiles, pick_profile, profiles
from avemo.runtime.backends.ort import OrtBackend
from avemo.runtime.backends.parity import sample_inputs
from tests.conftest import DISCRETE, assert_close
from tests.conftest import build_with_double as _build


def _clips(features, seconds: list[float], seed: int = 0):
    from avemo.runtime.recognizer import ClipInput

    rng = np.random.default_rng(seed)
    size = features.face_size
    return [
        ClipInput(
            rng.normal(0, 3, (round(s * features.frames_per_second), features.audio_dim)).astype(np.float32),
            rng.integers(0, 256, (max(1, round(s * features.fps)), 3, size, size), np.uint8),
        )
        for s in seconds
    ]


def test_a_batch_is_written_once_straight_into_page_locked_memory(trt_double):
    """Item 2: no host array of the batch's size before the engine runs, and one copy to the device per input,
    read from the page-locked memory the clips were written into."""
    from avemo.runtime.recognizer import Recognizer

    manifest, tensorrt, cuda = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32")
    clips = _clips(manifest.features, [7.0, 4.0, 6.5])
    peaks: list[int] = []
    tensorrt.ON_EXECUTE.append(lambda: peaks.append(tracemalloc.get_traced_memory()[1]))
    with Recognizer(manifest.root, backend="trt") as recognizer:
        engine = recognizer.backends["av"]
        slots = {id(host.base) for name in engine.input_names for host in engine.buffers[name].hosts}
        want = [r.probs for r in recognizer.infer(clips)]  # the first call: nothing left to allocate later
        cuda.HTOD.clear()
        tracemalloc.start()
        try:
            got = [r.probs for r in recognizer.infer(clips)]
        finally:
            tracemalloc.stop()
        assert got == want
    assert len(cuda.HTOD) == len(engine.input_names)  # one transfer per input per call
    assert {id(source) for source, _ in cuda.HTOD} <= slots  # each from the memory the clips went into
    audio_bytes = 3 * 1000 * manifest.features.audio_dim * 4  # the audio batch, padded to 10 s
    assert max(bytes_ for _, bytes_ in cuda.HTOD) == audio_bytes
    assert peaks[-1] < audio_bytes / 4  # host memory allocated from the call's start to the engine's run


def test_the_next_batch_is_staged_while_the_engine_runs(trt_double):
    """Item 2: the activation area's lock covers the engine run only: a second thread writes its batch into
    the other page-locked slot while the first call's engine is still running (blocked in the double)."""
    from avemo.runtime.backends.trt import TrtBackend

    manifest, tensorrt, _ = trt_double("10.3.0", DISCRETE)
    _build(manifest, "fp32", ["a"])
    running, release, staged = threading.Event(), threading.Event(), threading.Event()
    tensorrt.ON_EXECUTE.append(lambda: (running.set(), release.wait(30)))
    first, second = (sample_inputs(manifest.features, "a", 2, s, seed) for s, seed in ((2.0, 1), (3.0, 2)))
    results: dict[str, np.ndarray] = {}
    with TrtBackend(manifest, "a", "fp32") as engine:

        def stage_and_run() -> None:
            with engine.staging({k: v.shape for k, v in second.items()}) as batch:
                for name, array in second.items():
                    write_padded(batch.arrays[name], array)
                staged.set()
                results["second"] = batch.run()

        worker = threading.Thread(target=lambda: results.setdefault("first", engine.infer(first)))
        worker.start()
        assert running.wait(30)
        stager = threading.Thread(target=stage_and_run)
        stager.start()
        staged_meanwhile = staged.wait(10) and worker.is_alive()
        release.set()
        worker.join(30)
        stager.join(30)
    assert staged_meanwhile
    ort = OrtBackend(manifest.graph_path("a"))
    assert_close(results["first"], ort.infer(first))
    assert_close(results["second"], ort.infer(second))


def test_engines_have_a_profile_per_bucket_and_each_batch_runs_in_its_own(trt_double):
    """Item 3: two profiles built; a batch of short clips runs in the live profile, a longer one in the file
    profile (switched as TensorRT requires), answers unchanged; the double refuses shapes outside the
    selected profile."""
    from avemo.runtime.backends.trt import TrtBackend

    manifest, tensorrt, _ = trt_double("10.3.0", DISCRETE)
    (path,) = _build(manifest, "fp32", ["av"])
    assert json.loads(path.with_suffix(".json").read_text())["buckets"] == [[5.0, 1], [30.0, None]]
    ort = OrtBackend(manifest.graph_path("av"))
    tensorrt.PROFILE_SWITCHES.clear()  # the build's parity run switched too
    with TrtBackend(manifest, "av", "fp32") as engine:
        assert engine.engine.num_optimization_profiles == 2
        for seconds, profile, seed in ((1.0, 0, 1), (5.0, 0, 2), (12.0, 1, 3), (29.0, 1, 4), (0.5, 0, 5)):
            inputs = sample_inputs(manifest.features, "av", 3, seconds, seed)
            assert_close(engine.infer(inputs), ort.infer(inputs))
            assert engine.profile == engine.context.active_optimization_profile == profile
        assert tensorrt.PROFILE_SWITCHES == [1, 0]
        assert not engine.context.set_input_shape("audio_feats", (1, 1000, 240))  # 10 s: not in profile 0
        assert not engine.context.set_optimization_profile_async(2, engine.stream.handle)


def test_an_engine_built_with_one_profile_still_runs(trt_double):
    """Engines built before buckets (one profile, a sidecar with ``profile``) keep running, padded to its
    minimum only."""
    from avemo.runtime.backends.build import build_engine
    from avemo.runtime.backends.trt import TrtBackend, current_device

    manifest, tensorrt, _ = trt_double("10.3.0", DISCRETE)
    path = build_engine(manifest, "a", "fp32", current_device(), log=lambda *_: None, buckets=None)
    sidecar = path.with_suffix(".json")
    meta = {k: v for k, v in json.loads(sidecar.read_text()).items() if k not in ("buckets", "profiles")}
    meta["profile"] = {k: list(map(list, v)) for k, v in profiles(manifest, "a").items()}
    sidecar.write_text(json.dumps(meta))
    ort = OrtBackend(manifest.graph_path("a"))
    with TrtBackend(manifest, "a", "fp32") as engine:
        assert engine.engine.num_optimization_profiles == 1 and len(engine.limits) == 1
        for seconds, seed in ((0.05, 6), (12.0, 7)):  # 0.05 s: 5 frames, below the profile's 8
            inputs = sample_inputs(manifest.features, "a", 2, seconds, seed)
            assert_close(engine.infer(inputs), ort.infer(inputs))
    assert tensorrt.PROFILE_SWITCHES == []


@pytest.mark.parametrize(
    ("precision", "kind", "cases"),
    [("fp32", "ort", ((0.3, 1), (3.7, 2), (7.0, 3), (26.0, 4))), ("fp16", "reference", ((3.7, 2), (7.0, 3)))],
)
def test_padding_within_a_bucket_changes_no_answer(colearn_export, precision, kind, cases):
    """A clip alone against the same clip padded to its bucket's shape: fp32 in ONNX Runtime, fp16 in the
    reference evaluator (every fp16 rounding, as a strongly typed engine computes)."""
    from avemo.runtime.backends import open_onnx
    from avemo.runtime.models.manifest import load_manifest

    manifest = load_manifest(colearn_export[0])
    runner = open_onnx(manifest.graph_path("av", precision), kind)
    limits = bucket_profiles(manifest, "av")
    for seconds, seed in cases:
        alone = sample_inputs(manifest.features, "av", 1, seconds, seed)
        _, shapes = pick_profile(limits, {k: v.shape for k, v in alone.items()})
        padded = {k: np.empty(shapes[k], v.dtype) for k, v in alone.items()}
        for name, array in alone.items():
            write_padded(padded[name], array)
        assert padded["audio_feats"].shape[1] > alone["audio_feats"].shape[1]
        assert np.abs(runner.infer(padded) - runner.infer(alone)).max() <= INVARIANCE_TOLERANCE[precision]
