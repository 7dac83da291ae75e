"""Recognizer and `avemo infer` on CPU (ONNX Runtime), end to end on media made here, and without torch."""

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from avemo.errors import AvemoError
from avemo.export.exporter import export_run
from avemo.runtime.media.sample import write_media
from avemo.runtime.recognizer import ClipInput, Recognizer
from tests.conftest import make_checkpoint


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "both": write_media(d / "both.mp4", seconds=3.0),
        "no_face": write_media(d / "no_face.mp4", seconds=2.0, face=False),
        "silent": write_media(d / "silent.mp4", seconds=2.0, audio_rate=None),
        "long": write_media(d / "long.mp4", seconds=7.0),
    }


@pytest.fixture(scope="module")
def recognizer(colearn_export):
    return Recognizer(colearn_export[0], threads=1)


def test_graph_is_chosen_by_what_the_clip_has(recognizer, media):
    both = recognizer.recognize(media["both"])
    assert both.modality == "av" and set(both.probs) == {"happy", "sad", "anger", "surprise", "disgust", "fear"}
    assert both.labels == [k for k, p in both.probs.items() if p >= 0.5]
    no_face = recognizer.recognize(media["no_face"])
    assert no_face.modality == "a" and any("no face" in n for n in no_face.notes)
    silent = recognizer.recognize(media["silent"])
    assert silent.modality == "v" and "no audio stream" in silent.notes
    assert both.timings_ms["features"] > 0 and both.timings_ms["inference"] > 0


def test_batched_inference_equals_one_by_one(recognizer, media):
    clips = [recognizer.prepare(media[k])[0] for k in ("both", "long", "no_face", "silent")]
    together = recognizer.infer(clips)
    alone = [recognizer.infer([c])[0] for c in clips]
    assert [r.modality for r in together] == ["av", "av", "a", "v"]  # input order kept across groups
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-5)
    assert together[0].timings_ms["batch"] == 2  # the two A+V clips ran as one batch


def test_one_recognizer_shared_by_threads(recognizer, media):
    reference = recognizer.recognize(media["both"]).probs
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: recognizer.recognize(media["both"]).probs, range(8)))
    for probs in results:
        np.testing.assert_allclose(list(probs.values()), list(reference.values()), atol=1e-6)


def test_bad_arrays_are_refused_with_a_clear_message(recognizer):
    s = recognizer.features.face_size
    with pytest.raises(AvemoError, match=r"clip 0: audio has shape \(10, 80\)"):
        recognizer.infer([ClipInput(np.zeros((10, 80), np.float32), np.zeros((0, 3, s, s), np.float32))])
    with pytest.raises(AvemoError, match="faces have shape"):
        recognizer.infer([ClipInput(np.zeros((0, 240), np.float32), np.zeros((2, 3, 64, 64), np.float32))])
    with pytest.raises(AvemoError, match="neither audio nor a face"):
        recognizer.infer([ClipInput(np.zeros((0, 240), np.float32), np.zeros((0, 3, s, s), np.float32))])
    nan = np.full((20, 240), np.nan, np.float32)
    with pytest.raises(AvemoError, match="audio contain NaN"):
        recognizer.infer([ClipInput(nan, np.zeros((0, 3, s, s), np.float32))])


def test_audio_only_model_refuses_a_silent_video(micro_config, media, tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "a.pt", micro_config, "audio")
    export_run(ckpt, tmp_path / "models", log=lambda *_: None)
    with pytest.raises(AvemoError, match="this model needs a input"):
        Recognizer(tmp_path / "models").recognize(media["silent"])


def test_the_model_carries_its_face_detector(colearn_export, media, capsys):
    from avemo.config import FeatureConfig

    recognizer = Recognizer(colearn_export[0], threads=1)
    trained = recognizer.manifest.features
    assert (trained.face_detector, trained.face_detector_sha256) == ("yunet", FeatureConfig().face_detector_sha256)
    assert recognizer.faces.detector.name == "yunet"  # the model's own, with no option given
    other = Recognizer(colearn_export[0], threads=1, face_detector="haar")  # allowed, loudly
    result = other.recognize(media["both"])
    assert any("differs from the training detector yunet" in note for note in result.notes)
    assert "WARNING: face detector haar" in capsys.readouterr().err


def test_recognizer_runs_where_torch_cannot_be_imported(colearn_export, media):
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        from avemo.runtime.recognizer import Recognizer
        result = Recognizer({str(colearn_export[0])!r}).recognize({str(media["both"])!r})
        assert "torch" not in sys.modules
        print(result.modality)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "av"


def test_a_long_clip_is_the_length_weighted_mean_of_its_windows(colearn_export):
    """Past the 30 s the model's engines take, a clip is cut into windows (on every backend) and averaged."""
    from avemo.contract import LABELS
    from avemo.runtime.media.audio import add_deltas
    from avemo.runtime.recognizer import ClipInput, Recognizer
    from tests.conftest import long_clip_features

    recognizer = Recognizer(colearn_export[0])
    feats = long_clip_features(recognizer.features, seconds=35.0)
    result = recognizer.recognize_features(feats, "clip", (None, None), 0.0)
    audio = add_deltas(feats.fbank, recognizer.features.delta_window)
    faces = np.stack(feats.faces).transpose(0, 3, 1, 2)
    first = ClipInput(audio[:3000], faces[:90])  # [0, 30) s: 3000 frames, 90 crops at 3 fps
    second = ClipInput(audio[3000:], faces[90:])  # [30, 35) s
    parts = recognizer.infer([first, second])
    expected = (
        30 * np.array([parts[0].probs[k] for k in LABELS]) + 5 * np.array([parts[1].probs[k] for k in LABELS])
    ) / 35
    np.testing.assert_allclose([result.probs[k] for k in LABELS], expected, rtol=0, atol=1e-6)
    assert result.modality == "av" and "recognised in 2 windows (A+V)" in result.notes[0]
    short = recognizer.recognize_features(long_clip_features(recognizer.features, 20.0), "clip", (None, None), 0.0)
    assert not short.notes  # 20 s: one piece, as before


def test_face_crops_carry_their_times_from_the_clip_start(recognizer, media):
    """The times let a long clip be cut into windows (each crop goes with its own stretch of audio)."""
    _, whole = recognizer.prepare(media["long"])
    assert len(whole.face_times) == len(whole.faces) == 21  # 7 s at 3 fps
    np.testing.assert_allclose(whole.face_times, np.arange(21) / 3, atol=1 / 15)  # the sampled frames (15 fps)
    _, segment = recognizer.prepare(media["long"], start=2.0, end=5.0)
    np.testing.assert_allclose(segment.face_times, np.arange(9) / 3, atol=1 / 15)  # from the segment start
    windows = list(recognizer.stream(media["long"], 3.0, 2.0))
    assert windows and all(w.frames_with_face == 9 for w in windows)
