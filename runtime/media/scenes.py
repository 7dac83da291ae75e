"""Labelled face clips: a real face photograph moving over backgrounds that provoke false faces.

The face is scikit-image's ``astronaut`` (public domain): it moves across the frame, scales (face
60-320 px high at 720p), turns in the image plane (up to 25 degrees) and dims (brightness
x0.35-1.2). Its true box in every frame follows from how the frame is drawn. Scenes:

- ``plain``: a flat grey background;
- ``periodic``: a smooth periodic pattern (two products of sines) on which YuNet alone finds
  false faces of 370-600 x 530-660 px at 0.6-0.8 in most frames (searched at 640 px);
- ``texture``: seeded noise smoothed at several scales (a busy natural-looking texture);
- ``second face``: the plain background and a second, smaller real face (scikit-image's
  ``camera``) standing still at the top left;
- ``no face``: the periodic pattern alone.

Used by ``scripts/bench_faces.py`` (precision and recall per detector) and the face tests; needs OpenCV and
PyAV (the runtime extra).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from avemo.runtime.media.sample import face_photo, second_face_photo, speech_like

SCENES = ("plain", "periodic", "texture", "second face", "no face")
SIZE = (1280, 720)  # the frame the poses are drawn for; other sizes scale everything
PHOTO = 512
FACE_IN_PHOTO = (190.0, 68.0, 150.0, 182.0)  # YuNet's box of the astronaut in face_photo(512), x y w h
SECOND = (40, 40, 200)  # x, y, photo side of the second face at 720p: its face is about 70 px high
SECOND_IN_PHOTO = (0.38, 0.22, 0.28, 0.36)  # the cameraman's face box in second_face_photo, as fractions
GREY = (70, 80, 90)

Box = tuple[float, float, float, float]


def pose(t: float, seconds: float) -> tuple[float, float, float, float, float]:
    """(centre x, centre y, face height px, angle deg, brightness) of the face at time t, at 720p."""
    u = t / seconds
    height = 60 + 260 * (0.5 - 0.5 * np.cos(2 * np.pi * 1.5 * u))
    return (
        640 + 420 * np.sin(2 * np.pi * u),
        360 + 160 * np.sin(2 * np.pi * 2 * u),
        height,
        25 * np.sin(2 * np.pi * 2.5 * u),
        0.35 + 0.85 * (0.5 + 0.5 * np.cos(2 * np.pi * 1.2 * u)),
    )


def background(scene: str, size: tuple[int, int] = SIZE) -> np.ndarray:
    """The scene's background, [H, W, 3] uint8, drawn at 720p and resized to ``size``."""
    import cv2

    w, h = SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if scene in ("periodic", "no face"):
        pattern = np.zeros((h, w), np.float32)
        for period, angle, phase in ((879.9, 0.338, 2.841), (270.5, 2.352, 4.045)):
            u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
            pattern += np.sin(2 * np.pi * u / period + phase) * np.sin(2 * np.pi * v / period)
        tint = np.array([0.86, 0.54, 0.68], np.float32)
    elif scene == "texture":
        rng = np.random.default_rng(3)
        pattern = sum(
            cv2.resize(rng.normal(size=(h // k, w // k)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
            for k in (4, 16, 48)
        )
        tint = np.array([0.7, 0.8, 0.6], np.float32)
    else:
        return np.full((size[1], size[0], 3), GREY, np.uint8)
    pattern = (pattern - pattern.min()) / np.ptp(pattern)
    image = (pattern[..., None] * tint * 220 + 20).astype(np.uint8)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size != SIZE else image


def random_pattern(rng: np.random.Generator) -> np.ndarray:
    """A random smooth background at 720p: 1-3 gratings, products of gratings or rings (periods 80-900
    px), tinted; the ``periodic`` scene is one such draw."""
    w, h = SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    pattern = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(1, 4)):
        period, angle, phase = rng.uniform(80, 900), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
        kind = rng.integers(0, 3)
        if kind == 0:
            pattern += np.sin(2 * np.pi * u / period + phase)
        elif kind == 1:
            pattern += np.sin(2 * np.pi * u / period + phase) * np.sin(2 * np.pi * v / period)
        else:
            pattern += np.cos(2 * np.pi * np.hypot(x - rng.uniform(0, w), y - rng.uniform(0, h)) / period)
    pattern = (pattern - pattern.min()) / (np.ptp(pattern) + 1e-6)
    return (pattern[..., None] * rng.uniform(0.5, 1, 3) * 220 + 20).astype(np.uint8)


class Scene:
    """Draws a scene's frames and their true face boxes (main face first) at any size."""

    def __init__(self, scene: str, seconds: float, size: tuple[int, int] = SIZE) -> None:
        if scene not in SCENES:
            raise ValueError(f"unknown scene {scene!r}; expected one of {', '.join(SCENES)}")
        self.scene, self.seconds, self.size = scene, seconds, size
        self.zoom = size[0] / SIZE[0]
        self.background = background(scene, size)
        self.photo = face_photo(PHOTO)
        self.second = second_face_photo(round(SECOND[2] * self.zoom))

    def render(self, t: float) -> tuple[np.ndarray, list[Box]]:
        import cv2

        frame, boxes = self.background.copy(), []
        if self.scene == "second face":
            x, y, side = (round(v * self.zoom) for v in SECOND)
            frame[y : y + side, x : x + side] = self.second
            fx, fy, fw, fh = SECOND_IN_PHOTO
            boxes.append((x + fx * side, y + fy * side, fw * side, fh * side))
        cx, cy, height, angle, light = pose(t, self.seconds)
        if self.scene != "no face":
            cx, cy, height = cx * self.zoom, cy * self.zoom, height * self.zoom
            scale = height / FACE_IN_PHOTO[3]
            fx, fy = FACE_IN_PHOTO[0] + FACE_IN_PHOTO[2] / 2, FACE_IN_PHOTO[1] + FACE_IN_PHOTO[3] / 2
            matrix = cv2.getRotationMatrix2D((fx, fy), angle, scale)
            matrix[:, 2] += (cx - fx, cy - fy)  # the face centre lands on (cx, cy)
            cv2.warpAffine(self.photo, matrix, self.size, dst=frame, borderMode=cv2.BORDER_TRANSPARENT)
            width = FACE_IN_PHOTO[2] * scale
            boxes.insert(0, (cx - width / 2, cy - height / 2, width, height))
        return np.clip(frame.astype(np.float32) * light, 0, 255).astype(np.uint8), boxes


def write_clip(
    path: Path, scene: str, seconds: float, size: tuple[int, int] = SIZE, fps: int = 30, audio: bool = False
) -> dict[float, list[Box]]:
    """An H.264 clip (x264's defaults: B-frames) of ``scene``, with speech-like audio if asked; returns
    the true boxes by frame time (ms-rounded)."""
    drawing, truth = Scene(scene, seconds, size), {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        sound = container.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(int(seconds * fps)):
            frame, truth[round(i / fps, 3)] = drawing.render(i / fps)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
        if sound is not None:
            samples = speech_like(seconds, 16000)
            for i in range(0, samples.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i : i + 1024]), "fltp", "mono")
                chunk.sample_rate, chunk.pts = 16000, i
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    return truth


if __name__ == "__main__":  # `python -m avemo.runtime.media.scenes OUT.mp4 SCENE [SECONDS]`: a 720p clip with audio
    import sys

    write_clip(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 10.0, audio=True)
