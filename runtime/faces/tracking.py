"""Following faces across sampled frames, cheaply.

A full-frame search (at most ``detect_side`` pixels on the longer side) runs on
the first sampled frame, every ``redetect_every``-th one after it (to find
faces that came into view) and whenever a tracked face is lost. In between,
each tracked face is searched for only in a window of ``TRACK_WINDOW`` face
sides around where it should be by now (its last box moved on at its last
velocity), scaled so the face is about ``TRACK_FACE_PX`` pixels, for faces of
a similar size: a fraction of the full search's cost. Every face keeps an id
from frame to frame, so the speaker choice can follow it.

Hysteresis, as trackers by detection do: a face starts a track only on a high
score (``START_SCORE``) confirmed by a second look, a tracked face survives on
the detector's own threshold (``KEEP_SCORE``); and only plausible faces count
(``plausible``: landmark geometry, aspect, mostly inside the frame). A smooth
periodic background gives YuNet false faces at 0.6-0.8 in most frames; real
faces score 0.85-0.94 and down to about 0.65 turned and dim (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avemo.deps import require
from avemo.runtime.faces.detectors import Face, FaceDetector

TRACK_WINDOW = 2.5  # search window side, in face sides
TRACK_SCALE = (0.7, 1.4)  # a tracked face may shrink or grow this much between sampled frames
TRACK_FACE_PX = 48  # the window is scaled so the face is about this big: YuNet finds it in a 128-px image
REDETECT_EVERY = 6  # sampled frames between full-frame searches for faces that came into view (2 s at 3 fps)
MATCH_DISTANCE = 2.5  # a detection continues a track whose predicted centre is up to this many face sides away
MATCH_SIZE = (0.5, 2.0)  # ... and whose size is within these ratios
MAX_GAP = 3  # sampled frames a lost face is remembered for, to continue its track when it is found again
HAAR_MIN_FRACTION = 1 / 8  # Haar only: faces below this share of the short side are not searched (time)
START_SCORE = 0.8  # a detection starts a track only at this score
KEEP_SCORE = 0.6  # ... and continues one at this score (the detectors' own threshold)
ASPECT = (0.5, 1.2)  # width / height of a plausible box (faces measured 0.66-0.93, turned up to 30 degrees)
MIN_INSIDE = 0.6  # share of a plausible box's area inside the frame


@dataclass
class _Track:
    face: Face  # last seen, full-resolution coordinates
    seen: int  # frame index
    velocity: tuple[float, float] = (0.0, 0.0)  # pixels per sampled frame, from the last two sightings

    def predicted(self, frame: int) -> Face:
        """Where the face should be at ``frame``, moving on as it moved (a face crosses a 720p frame in
        seconds: at 3 fps a small face moves more than its own side between samples)."""
        steps = frame - self.seen
        return self.face.moved(self.velocity[0] * steps, self.velocity[1] * steps, 1.0)


def centre(box: tuple[float, ...]) -> np.ndarray:
    return np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / (aw * ah + bw * bh - inter) if inter > 0 else 0.0


def plausible(face: Face, width: int, height: int) -> bool:
    """Whether a detection can be a face in a ``width`` x ``height`` frame: a face-like aspect, mostly
    inside the frame, and (YuNet) landmarks in a face's order: eyes side by side, the mouth below
    them across the eye line (whatever the roll), the nose between, all within the box."""
    x, y, w, h = face.box
    if w <= 0 or h <= 0 or not ASPECT[0] <= w / h <= ASPECT[1]:
        return False
    inside = max(0.0, min(x + w, width) - max(x, 0.0)) * max(0.0, min(y + h, height) - max(y, 0.0))
    if inside < MIN_INSIDE * w * h:
        return False
    if face.landmarks is None:
        return True
    right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
    eyes, mouth = (right_eye + left_eye) / 2, (right_mouth + left_mouth) / 2
    across, down = left_eye - right_eye, mouth - eyes  # in image coordinates (y down)
    eye_gap, drop = float(np.hypot(*across)), float(np.hypot(*down))
    pad = 0.25 * max(w, h)  # landmarks of a turned face may lie a little outside its box
    in_box = np.all((face.landmarks >= (x - pad, y - pad)) & (face.landmarks <= (x + w + pad, y + h + pad)))
    if not in_box or eye_gap < 0.06 * w or drop < 0.1 * h:
        return False
    # The mouth lies on the eye line's downward side (the right-hand normal in image coordinates),
    # roughly square to it, and the nose between the eyes' and the mouth's level.
    square = (across[0] * down[1] - across[1] * down[0]) / (eye_gap * drop)
    along = float(np.dot(nose - eyes, down)) / drop**2
    return square > 0.7 and 0.1 < along < 0.95


class FaceTracker:
    """``update(rgb)`` -> [(track id, face)] for one sampled frame, in full-resolution pixels.

    One tracker follows one clip (it holds the previous frame's faces); the
    detector it uses may be shared.
    """

    def __init__(self, detector: FaceDetector, detect_side: int, redetect_every: int = REDETECT_EVERY) -> None:
        self.detector = detector
        self.detect_side = detect_side
        self.redetect_every = redetect_every
        self.full_searches = self.window_searches = 0  # counted for the benchmarks and tests
        self._tracks: dict[int, _Track] = {}
        self._frame = -1
        self._next_id = 0

    def update(self, rgb: np.ndarray) -> list[tuple[int, Face]]:
        self._frame += 1
        active = {i: t for i, t in self._tracks.items() if t.seen == self._frame - 1}
        if active and self._frame % self.redetect_every:
            found = {}
            for i, track in active.items():
                face = self._search_near(rgb, track.predicted(self._frame))
                if face is None:
                    break  # lost: search the whole frame instead
                found[i] = face
            else:
                for i, face in found.items():
                    self._follow(i, face)
                return sorted(found.items())
        return self._associate(rgb, self._search_frame(rgb))

    def _scale(self, rgb: np.ndarray) -> float:
        return min(1.0, self.detect_side / max(rgb.shape[:2]))

    def _search_frame(self, rgb: np.ndarray) -> list[Face]:
        cv2 = require("cv2", "pip install 'avemo[runtime]'")
        self.full_searches += 1
        scale = self._scale(rgb)
        h, w = rgb.shape[:2]
        small = (
            cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        )
        min_side = HAAR_MIN_FRACTION * min(small.shape[:2]) if self.detector.name == "haar" else 0.0
        faces = [f.moved(0, 0, 1 / scale) for f in self.detector.detect(small, min_side)]
        return [f for f in faces if f.score >= KEEP_SCORE and plausible(f, w, h)]

    def _search_near(self, rgb: np.ndarray, last: Face) -> Face | None:
        cv2 = require("cv2", "pip install 'avemo[runtime]'")
        self.window_searches += 1
        x, y, bw, bh = last.box
        side = max(bw, bh)
        n = max(2, round(side * TRACK_WINDOW))  # a square window, padded where it leaves the frame
        x0, y0 = round(x + bw / 2 - n / 2), round(y + bh / 2 - n / 2)
        # Searched at a size in steps of 32 px (128 for most faces): a detector network is shaped
        # for its input size, and reshaping it for every window would cost more than the search.
        size = max(32, -(-round(n * min(self._scale(rgb), TRACK_FACE_PX / side)) // 32) * 32)
        scale = size / n
        h, w = rgb.shape[:2]
        ax, ay, bx, by = max(0, x0), max(0, y0), min(w, x0 + n), min(h, y0 + n)
        if bx - ax < side / 2 or by - ay < side / 2:
            return None  # the face has (mostly) left the frame
        # Only the part inside the frame is resized (from a view, no copy) into a black square.
        dx0, dy0 = round((ax - x0) * scale), round((ay - y0) * scale)
        dx1, dy1 = max(dx0 + 1, round((bx - x0) * scale)), max(dy0 + 1, round((by - y0) * scale))
        roi = np.zeros((size, size, 3), np.uint8)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        roi[dy0:dy1, dx0:dx1] = cv2.resize(rgb[ay:by, ax:bx], (dx1 - dx0, dy1 - dy0), interpolation=interpolation)
        lo, hi = (side * scale * f for f in TRACK_SCALE)
        faces = [f.moved(x0 * scale, y0 * scale, 1 / scale) for f in self.detector.detect(roi, lo, hi)]
        faces = [f for f in faces if f.score >= KEEP_SCORE and plausible(f, w, h)]
        return max(faces, key=lambda f: iou(f.box, last.box), default=None)

    def _associate(self, rgb: np.ndarray, faces: list[Face]) -> list[tuple[int, Face]]:
        """Give each detection the id of the nearest recent track (greedy, by predicted centre), or a new id where it
        scores ``START_SCORE`` and a second look confirms it (others are dropped).

        The second look is the tracking search around it (a window of a few face sides, the face at
        ``TRACK_FACE_PX``): false faces of a smooth background pattern are found at one scale and
        framing only, and vanish there, while real ones score as high (docs/BENCHMARKS.md)."""
        recent = {i: t for i, t in self._tracks.items() if self._frame - t.seen <= MAX_GAP}
        pairs = []
        for i, track in recent.items():
            guess = track.predicted(self._frame)
            side = max(guess.box[2:])
            for j, f in enumerate(faces):
                distance = float(np.hypot(*(centre(f.box) - centre(guess.box)))) / side
                if distance <= MATCH_DISTANCE and MATCH_SIZE[0] <= max(f.box[2:]) / side <= MATCH_SIZE[1]:
                    pairs.append((distance, i, j))
        ids: dict[int, int] = {}
        for _, i, j in sorted(pairs):
            if i not in ids.values() and j not in ids:
                ids[j] = i
        for j, face in enumerate(faces):
            if j not in ids and face.score >= START_SCORE:
                confirmed = self._search_near(rgb, face)
                if confirmed is not None:
                    face = faces[j] = confirmed
                    ids[j], self._next_id = self._next_id, self._next_id + 1
            if j in ids:
                self._follow(ids[j], face)
        self._tracks = {i: t for i, t in self._tracks.items() if self._frame - t.seen <= MAX_GAP}
        return sorted((i, faces[j]) for j, i in ids.items())

    def _follow(self, i: int, face: Face) -> None:
        """Track ``i`` seen now at ``face``."""
        last = self._tracks.get(i)
        velocity = (0.0, 0.0)
        if last is not None:
            velocity = tuple((centre(face.box) - centre(last.face.box)) / (self._frame - last.seen))
        self._tracks[i] = _Track(face, self._frame, velocity)
