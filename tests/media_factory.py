"""Media made by the tests: the sample clips (avemo.runtime.media.sample, re-exported here), a MOSEI tree,
features of a long clip, and `send`, which streams a file at real-time pace."""

from __future__ import annotations

import json
from pathlib import Path

import av
import h5py
import numpy as np

from avemo.runtime.media.sample import (  # noqa: F401 (re-exported for the tests and scripts)
    MOUTHS,
    draw_mouth,
    face_photo,
    mouth_opening,
    second_face_photo,
    speech_gate,
    speech_like,
    write_media,
    write_two_faces,
)


def write_long_audio(path: Path, seconds: float, rate: int = 16000, bitrate: int = 12000) -> Path:
    """A long, low-bitrate AAC file (an hour is a few MB), encoded a minute at a time: memory stays flat."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        stream.bit_rate = bitrate
        minute = speech_like(60.0, rate)  # repeated: generating hours of samples would dominate the run
        for start in range(0, int(seconds * rate), minute.shape[1]):
            chunk = minute[:, : min(minute.shape[1], int(seconds * rate) - start)]
            for i in range(0, chunk.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[:, i : i + 1024]), "fltp", "mono")
                frame.sample_rate, frame.pts = rate, start + i
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
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


def send(path: Path, url: str, seconds: float | None = None) -> None:
    """Remux ``path`` (MPEG-TS) to ``url`` at real-time pace, like `ffmpeg -re -i path -c copy -f mpegts url`;
    ``seconds``: stop after that much media time (a stream that breaks off)."""
    import time

    probe = {"probesize": "50000000", "analyzeduration": "20000000"}  # 720p TS: find the audio's parameters too
    with av.open(str(path), options=probe) as source, av.open(url, "w", format="mpegts") as sink:
        streams = {s.index: sink.add_stream_from_template(s) for s in source.streams if s.type in ("audio", "video")}
        started = time.monotonic()
        for packet in source.demux(*[s for s in source.streams if s.index in streams]):
            if packet.dts is None:
                continue
            t = float(packet.pts * packet.time_base) if packet.pts is not None else 0.0
            if seconds is not None and t >= seconds:
                break
            time.sleep(max(0.0, started + t - time.monotonic()))
            packet.stream = streams[packet.stream.index]
            sink.mux(packet)


def long_clip_features(features, seconds: float = 35.0):
    """MediaFeatures of a clip of ``seconds`` (fbank frames and face crops at 3 fps with their times), made
    without media: for clips longer than the model's engines take at once."""
    from avemo.runtime.media.extract import MediaFeatures

    rng = np.random.default_rng(8)
    size = features.face_size
    times = [i / features.fps for i in range(int(seconds * features.fps))]
    crops = [rng.integers(0, 255, (size, size, 3), np.uint8) for _ in times]
    fbank = rng.normal(0, 3, (int(seconds * features.frames_per_second), features.num_mel_bins)).astype(np.float32)
    return MediaFeatures(fbank, crops, len(times), [], {}, times)


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "send":  # `python -m tests.media_factory send FILE.ts URL [SECONDS]`
        send(Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else None)
        sys.exit(0)

    # `python -m tests.media_factory OUT.mp4 [SECONDS [WIDTH HEIGHT]]`, as in docs/BENCHMARKS.md's commands:
    # the same clip as `avemo sample OUT.mp4 --seconds S --size WxH`.
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    size = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (320, 240)
    print(write_media(Path(sys.argv[1]), seconds=seconds, size=size))
