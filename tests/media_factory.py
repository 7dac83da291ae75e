"""Media made by the tests: mp4/wav files with speech-like audio and a real face photo, and a MOSEI tree.

The face is scikit-image's `astronaut()` photograph, so the default Haar
detector finds a real face, not a drawing.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np


def face_photo(size: int = 256) -> np.ndarray:
    import cv2
    from skimage import data

    head = data.astronaut()[20:340, 60:380]  # head and shoulders: the face fills about a third
    return cv2.resize(head, (size, size), interpolation=cv2.INTER_AREA)


def speech_like(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Voiced harmonics under a syllable envelope, plus noise: [channels, samples] float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.maximum(0, np.sin(2 * np.pi * 4 * t)) ** 2
    mono = 0.3 * envelope * voiced + 0.01 * rng.normal(size=t.size)
    return np.repeat(mono[None, :], channels, axis=0).astype(np.float32)


def write_media(
    path: Path,
    seconds: float = 3.0,
    fps: float = 15,
    size: tuple[int, int] = (320, 240),
    audio_rate: int | None = 16000,
    audio_layout: str = "mono",
    video: bool = True,
    face: bool = True,
    frame_times: list[float] | None = None,
    time_base: Fraction = Fraction(1, 1000),
    codec: str = "mpeg4",
) -> Path:
    """An mp4 (or any container FFmpeg infers from the suffix) with optional audio and video streams.

    ``frame_times`` gives explicit presentation times (variable frame rate); ``time_base``
    the video stream's (MPEG-4 part 2 takes denominators up to 65535; libx264 any).
    """
    w, h = size
    photo = face_photo(min(w, h) * 3 // 4)
    channels = {"mono": 1, "stereo": 2, "5.1": 6}[audio_layout]
    with av.open(str(path), "w") as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
            vstream.codec_context.time_base = vstream.time_base = time_base
        if audio_rate:
            astream = container.add_stream("aac", rate=audio_rate, layout=audio_layout)
        if vstream is not None:
            times = frame_times if frame_times is not None else [i / fps for i in range(int(seconds * fps + 1e-9))]
            for t in times:
                img = np.full((h, w, 3), 90, np.uint8)
                if face:
                    x = (w - photo.shape[1]) // 2 + int(10 * np.sin(t))
                    img[(h - photo.shape[0]) // 2 :][: photo.shape[0], x : x + photo.shape[1]] = photo
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = round(t / time_base), time_base
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            samples = speech_like(seconds, audio_rate, channels)
            step = 1024
            for i in range(0, samples.shape[1], step):
                chunk = np.ascontiguousarray(samples[:, i : i + step])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=audio_layout)
                frame.sample_rate, frame.pts = audio_rate, i
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path


def write_mosei_tree(root: Path, videos: dict[str, dict], folds: dict[str, list[str]]) -> tuple[Path, Path]:
    """A few-clip MOSEI tree: labels .csd in the SDK layout, full-length mp4s, and a folds JSON.

    ``videos[id]`` holds ``intervals`` [[s, e], ...], ``emotions`` [[6 scores], ...] and
    optional ``media`` kwargs for write_media (``None`` writes no file; ``b"..."`` writes raw bytes).
    """
    vdir = root / "Raw" / "Videos" / "Full" / "Combined"
    vdir.mkdir(parents=True)
    with h5py.File(root / "CMU_MOSEI_Labels.csd", "w") as f:
        data = f.create_group("All Labels").create_group("data")
        f["All Labels"].create_group("metadata")
        for vid, spec in videos.items():
            g = data.create_group(vid)
            emotions = np.asarray(spec["emotions"], np.float64)
            sentiment = np.zeros((len(emotions), 1))
            g["features"] = np.concatenate([sentiment, emotions], axis=1)
            g["intervals"] = np.asarray(spec["intervals"], np.float64)
            media = spec.get("media", {})
            if isinstance(media, bytes):
                (vdir / f"{vid}.mp4").write_bytes(media)
            elif media is not None:
                write_media(vdir / f"{vid}.mp4", **media)
    folds_path = root / "folds.json"
    folds_path.write_text(json.dumps(folds))
    return root, folds_path


if __name__ == "__main__":
    import sys

    # `python -m tests.media_factory OUT.mp4 [SECONDS [WIDTH HEIGHT]]`: the demo's clip (speech-like
    # audio, a real face photo); the profiling benchmark uses a 10-s 640x360 one.
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    size = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (320, 240)
    print(write_media(Path(sys.argv[1]), seconds=seconds, size=size))
