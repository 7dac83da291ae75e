"""Sample media: clips with speech-like audio and real face photos (`avemo sample`, the demo, tests, benchmarks).

The faces are two public-domain photographs shipped with avemo (avemo/data/SAMPLE-FACES.md), so
the face detectors find real faces, not drawings; the audio is voiced harmonics under a syllable
envelope. Torch-free: needs the runtime extra only (PyAV, OpenCV).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import click
import numpy as np

from avemo.deps import require


def _photo(name: str) -> np.ndarray:
    """A face photo shipped in avemo/data (see SAMPLE-FACES.md there), RGB uint8."""
    from importlib.resources import files

    cv2 = require("cv2", "pip install 'avemo[runtime]'")
    data = np.frombuffer(files("avemo").joinpath(f"data/sample_face_{name}.png").read_bytes(), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, ::-1]


def face_photo(size: int = 256) -> np.ndarray:
    """A real face: the head and shoulders of scikit-image's `astronaut()` (the face fills about a third)."""
    cv2 = require("cv2", "pip install 'avemo[runtime]'")
    return cv2.resize(_photo("astronaut"), (size, size), interpolation=cv2.INTER_AREA)


def second_face_photo(size: int = 256) -> np.ndarray:
    """Another real face: the head of scikit-image's `camera()` photograph (grey), turned a little."""
    cv2 = require("cv2", "pip install 'avemo[runtime]'")
    return cv2.resize(_photo("camera"), (size, size), interpolation=cv2.INTER_AREA)


# Mouth corners (right, left) in each photo, as fractions of its side (YuNet's landmarks on them).
MOUTHS = {"astronaut": ((0.445, 0.383), (0.563, 0.393)), "camera": ((0.475, 0.490), (0.490, 0.495))}


def speech_gate(seconds: float, seed: int = 0) -> list[tuple[float, float]]:
    """Talk spurts [(start, end)]: 0.8-1.6 s of speech, then 0.6-1.2 s of silence, seeded."""
    rng, t, spurts = np.random.default_rng(seed), 0.2, []
    while t < seconds:
        end = min(seconds, t + rng.uniform(0.8, 1.6))
        spurts.append((t, end))
        t = end + rng.uniform(0.6, 1.2)
    return spurts


def mouth_opening(t: float, spurts: list[tuple[float, float]], seed: int = 0) -> float:
    """How open a speaker's mouth is at ``t`` (0..1): a new seeded opening every 0.2-s syllable of a spurt."""
    talking = any(a <= t < b for a, b in spurts)
    syllable = int(t / 0.2)
    return float(talking) * float(np.random.default_rng([seed, syllable]).uniform(0.2, 1.0))


def draw_mouth(img: np.ndarray, photo: str, x: int, y: int, side: int, opening: float) -> None:
    """An open mouth (a dark ellipse between the photo's mouth corners), ``opening`` 0..1."""
    cv2 = require("cv2", "pip install 'avemo[runtime]'")
    (rx, ry), (lx, ly) = MOUTHS[photo]
    width = max(lx - rx, 0.06) * side
    cx, cy = x + (rx + lx) / 2 * side, y + (ry + ly) / 2 * side + 0.1 * width
    if opening > 0.05:
        axes = (max(1, round(0.45 * width)), max(1, round(0.45 * width * opening)))
        cv2.ellipse(img, (round(cx), round(cy)), axes, 0, 0, 360, (25, 10, 10), -1)


def write_two_faces(path: Path, seconds: float = 8.0, speaker: str | None = "astronaut", audio: bool = True) -> Path:
    """Two real faces side by side (640x360, 15 fps): the astronaut small on the left, the cameraman
    larger on the right; ``speaker``'s mouth opens with the speech, the other's stays shut."""
    av = _av()
    size, fps, rate = (640, 360), 15, 16000
    photos = {"astronaut": (face_photo(200), 40, 80), "camera": (second_face_photo(300), 320, 30)}
    spurts = speech_gate(seconds)
    with av.open(str(path), "w") as container:
        vstream = container.add_stream("mpeg4", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = *size, "yuv420p"
        astream = container.add_stream("aac", rate=rate, layout="mono") if audio else None
        for i in range(int(seconds * fps)):
            t = i / fps
            img = np.full((size[1], size[0], 3), 90, np.uint8)
            for name, (photo, x, y) in photos.items():
                img[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
                if name == speaker:
                    draw_mouth(img, name, x, y, photo.shape[0], mouth_opening(t, spurts))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if astream is not None:
            t = np.arange(int(seconds * rate)) / rate
            gate = np.zeros_like(t)
            for a, b in spurts:
                gate[(t >= a) & (t < b)] = 1.0
            samples = speech_like(seconds, rate)[0] * gate + 0.003 * np.random.default_rng(1).normal(size=t.size)
            for i in range(0, len(samples), 1024):
                chunk = samples[None, i : i + 1024].astype(np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, i
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path


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
    av = _av()
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
        packets = []  # muxed in time order at the end: audio and video interleaved, as a camera writes them
        if vstream is not None:
            times = frame_times if frame_times is not None else [i / fps for i in range(int(seconds * fps + 1e-9))]
            for t in times:
                img = np.full((h, w, 3), 90, np.uint8)
                if face:
                    x = (w - photo.shape[1]) // 2 + int(10 * np.sin(t))
                    img[(h - photo.shape[0]) // 2 :][: photo.shape[0], x : x + photo.shape[1]] = photo
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = round(t / time_base), time_base
                packets.extend(vstream.encode(frame))
            packets.extend(vstream.encode(None))
        if astream is not None:
            samples = speech_like(seconds, audio_rate, channels)
            step = 1024
            for i in range(0, samples.shape[1], step):
                chunk = np.ascontiguousarray(samples[:, i : i + step])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=audio_layout)
                frame.sample_rate, frame.pts = audio_rate, i
                packets.extend(astream.encode(frame))
            packets.extend(astream.encode(None))
        packets.sort(key=lambda p: float(p.dts * p.time_base) if p.dts is not None else 0.0)
        for packet in packets:
            container.mux(packet)
    return path


def _av():
    return require("av", "pip install 'avemo[runtime]'")


def write_sample(path: Path, seconds: float = 4.0, faces: int = 1, size: tuple[int, int] = (320, 240)) -> Path:
    """`avemo sample`: one face (``size``, 15 fps) or two side by side (640x360, the smaller one speaking)."""
    if faces == 2:
        return write_two_faces(path, seconds)
    return write_media(path, seconds=seconds, size=size)


def write_long_audio(path: Path, seconds: float, rate: int = 16000, bitrate: int = 12000) -> Path:
    """A long, low-bitrate AAC file (an hour is a few MB), encoded a minute at a time: memory stays flat."""
    av = _av()
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


def send(path: Path, url: str, seconds: float | None = None) -> None:
    """Remux ``path`` (MPEG-TS) to ``url`` at real-time pace, like `ffmpeg -re -i path -c copy -f mpegts url`;
    ``seconds``: stop after that much media time (a stream that breaks off). Where the file's timestamps
    restart (recordings joined), the sender restarts as an encoder would: a new muxer, timestamps from
    the new base, pace kept."""
    import time

    from avemo.runtime.media.continuity import Continuity

    av = _av()
    probe = {"probesize": "50000000", "analyzeduration": "20000000"}  # 720p TS: find the audio's parameters too
    with av.open(str(path), options=probe) as source:
        chosen = [s for s in source.streams if s.type in ("audio", "video")]
        continuity, started = Continuity(source), time.monotonic()
        sink, streams, current = None, {}, -1  # the muxer of the recording being sent
        try:
            for packet in source.demux(*chosen):
                if packet.dts is None:
                    continue
                own = packet.pts, packet.dts  # this recording's times, sent as they are
                continuity.place(packet)  # paced on one timeline
                segment = continuity.segment.get(packet.stream.index, 0)
                if segment < current:
                    continue  # the old recording's encoder has stopped: a late packet of it is not sent
                if segment > current:  # a restart: the old muxer flushed and closed, a new one started
                    if sink is not None:
                        sink.close()
                    sink, current = av.open(url, "w", format="mpegts"), segment
                    streams = {s.index: sink.add_stream_from_template(s) for s in chosen}
                t = float(packet.pts * packet.time_base) if packet.pts is not None else 0.0
                if seconds is not None and t >= seconds:
                    break
                time.sleep(max(0.0, started + t - time.monotonic()))
                packet.pts, packet.dts = own
                packet.stream = streams[packet.stream.index]
                sink.mux(packet)
        finally:
            if sink is not None:
                sink.close()


def _size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected WIDTHxHEIGHT, e.g. 640x360") from None
    if min(w, h) < 64 or w % 2 or h % 2:
        raise click.BadParameter(f"{value!r}: even sides of at least 64 pixels")
    return w, h


@click.command()
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--seconds", type=click.FloatRange(min=0.5, max=3600), default=4.0, show_default=True)
@click.option(
    "--faces",
    type=click.Choice(["1", "2"]),
    default="1",
    show_default=True,
    help="2: two faces side by side, the smaller one speaking (for --faces speaker).",
)
@click.option("--size", default="320x240", show_default=True, callback=_size, help="One face: frame size.")
def sample(out: Path, seconds: float, faces: str, size: tuple[int, int]) -> None:
    """Write a synthetic talking-face clip (speech-like audio, real face photos; mp4 by its suffix).

    What the demo and the tests use, to try `avemo infer` without media of your own.

    \b
    Examples:
      avemo sample clip.mp4
      avemo sample panel.mp4 --faces 2 --seconds 8
      avemo sample talk.mp4 --seconds 60 --size 640x360
    """
    if out.parent != Path() and not out.parent.is_dir():
        raise click.BadParameter(f"folder {out.parent} does not exist", param_hint="OUT")
    click.echo(write_sample(out, seconds, int(faces), size))


if __name__ == "__main__":  # `python -m avemo.runtime.media.sample send FILE.ts URL [SECONDS]`: a live stream to try
    import sys

    if len(sys.argv) not in (4, 5) or sys.argv[1] != "send":
        sys.exit("usage: python -m avemo.runtime.media.sample send FILE.ts URL [SECONDS]")
    send(Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else None)
