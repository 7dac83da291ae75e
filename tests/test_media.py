"""Decoding, frame sampling, face crops and filterbanks on media made here (tests/media_factory.py)."""

from fractions import Fraction

import numpy as np
import pytest

from avemo.config import FeatureConfig
from avemo.errors import AvemoError
from avemo.runtime.audio import fbank
from avemo.runtime.extract import extract
from avemo.runtime.faces import FaceCropper
from avemo.runtime.media import decode_audio, sample_frames
from tests.media_factory import face_photo, write_media

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
    cropper = FaceCropper(FEATURES)
    feats = extract(silent, FEATURES, cropper)
    assert not feats.has_audio and feats.faces and "no audio stream" in feats.notes
    feats = extract(voice_only, FEATURES, cropper)
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
    feats = extract(path, FEATURES, FaceCropper(FEATURES), start=0.05, end=0.05)
    assert not feats.has_audio


def test_face_found_on_a_real_photo_and_not_on_a_blank_frame():
    cropper = FaceCropper(FEATURES)
    photo = face_photo(512)
    box = cropper.detect(photo)
    assert box is not None
    x, y, w, h = box
    assert 150 < x + w / 2 < 350 and 50 < y + h / 2 < 300 and w > 100  # the astronaut's face
    crop = cropper.crop(photo)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    assert cropper.crop(np.full((240, 320, 3), 90, np.uint8)) is None


def test_tracking_searches_near_the_last_face_and_falls_back_to_the_frame():
    cropper = FaceCropper(FEATURES)
    frame = np.full((360, 640, 3), 70, np.uint8)
    frame[60:316, 300:556] = face_photo(256)
    full = cropper.detect(frame)
    assert full is not None
    searched = []  # the image sizes the cascade was run on

    class Recorder:
        def detectMultiScale(self, gray, **kw):
            searched.append(gray.shape)
            return haar.detectMultiScale(gray, **kw)

    haar, cropper.haar = cropper.haar, Recorder()
    # Near the previous box (shifted a little, as between sampled frames): the same face, found in the window.
    near = (full[0] + 6, full[1] - 4, full[2], full[3])
    tracked = cropper.detect(frame, near)
    assert tracked is not None and max(abs(a - b) for a, b in zip(tracked, full, strict=True)) <= 12
    assert len(searched) == 1 and searched[0][0] * searched[0][1] < 0.5 * 270 * 480  # a window, not the frame
    # A stale box far from the face: the window finds nothing, the whole frame is searched.
    searched.clear()
    stale = cropper.detect(frame, (10, 200, 60, 60))
    assert stale is not None and abs(stale[0] - full[0]) <= 12
    assert searched[-1] == (270, 480)
    crop, box = cropper.track(frame, near)
    assert crop.shape == (128, 128, 3) and box == tracked
    assert cropper.track(np.full((360, 640, 3), 70, np.uint8), near) == (None, None)


def test_4k_frame_detects_on_a_downscaled_copy():
    import cv2

    frame = np.full((2160, 3840, 3), 80, np.uint8)
    frame[56:2104, 900:2948] = cv2.resize(face_photo(512), (2048, 2048))
    box = FaceCropper(FEATURES).detect(frame)
    assert box is not None and box[2] > 250  # full-resolution coordinates


def test_face_detector_model_errors(tmp_path):
    with pytest.raises(AvemoError, match="face detector model not found"):
        FaceCropper(FEATURES, tmp_path / "nope.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(AvemoError, match="not a YuNet face detector"):
        FaceCropper(FEATURES, tmp_path / "bad.onnx")


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
    from tests.media_factory import speech_like

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
