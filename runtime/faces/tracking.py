"""Following faces across sampled frames, cheaply.

A full-frame search (at most ``detect_side`` pixels on the longer side) runs on
the first sampled frame, every ``redetect_every``-th one after it (to find
faces that came into view) and whenever a tracked face is lost. In between,
each tracked face is searched for only in a window of ``TRACK_WINDOW`` face
sides around its last box, scaled so the face is about ``TRACK_FACE_PX``
pixels, for faces of a similar size: a fraction of the full search's cost.
Every face keeps an id from frame to frame, so the speaker choice can follow it.
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
MATCH_IOU = 0.2  # a new detection continues a track whose last box it overlaps this much
MAX_GAP = 3  # sampled frames a lost face is remembered for, to continue its track when it is found again
HAAR_MIN_FRACTION = 1 / 8  # Haar only: faces below this share of the short side are not searched (time)


@dataclass
class _Track:
    face: Face  # last seen, full-resolution coordinates
    seen: int  # frame index


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / (aw * ah + bw * bh - inter) if inter > 0 else 0.0


class FaceTracker:
    """``update(rgb)`` -> [(track id, face)] for one sampled frame, in full-resolution pixels.

    One tracker follows one clip (it holds the previous frame's faces); the
    detector it uses may be shared.
    """

    def __init__(self, detector: FaceDetector, detect_side: int, redetect_every: int = REDETECT_EVERY) -> None:
        self.detector = detector
        self.detect_side = detect_side
        self.redetect_every = redetect_every
        self.full_searches = 0  # counted for the benchmarks and tests
        self._tracks: dict[int, _Track] = {}
        self._frame = -1
        self._next_id = 0

    def update(self, rgb: np.ndarray) -> list[tuple[int, Face]]:
        self._frame += 1
        active = {i: t for i, t in self._tracks.items() if t.seen == self._frame - 1}
        if active and self._frame % self.redetect_every:
            found = {}
            for i, track in active.items():
                face = self._search_near(rgb, track.face)
                if face is None:
                    break  # lost: search the whole frame instead
                found[i] = face
            else:
                for i, face in found.items():
                    self._tracks[i] = _Track(face, self._frame)
                return sorted(found.items())
        return self._associate(self._search_frame(rgb))

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
        return [f.moved(0, 0, 1 / scale) for f in self.detector.detect(small, min_side)]

    def _search_near(self, rgb: np.ndarray, last: Face) -> Face | None:
        cv2 = require("cv2", "pip install 'avemo[runtime]'")
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
        return max(faces, key=lambda f: iou(f.box, last.box), default=None)

    def _associate(self, faces: list[Face]) -> list[tuple[int, Face]]:
        """Give each detection the id of the recent track it overlaps most (greedy), or a new id."""
        recent = {i: t for i, t in self._tracks.items() if self._frame - t.seen <= MAX_GAP}
        pairs = sorted(
            ((iou(t.face.box, f.box), i, j) for i, t in recent.items() for j, f in enumerate(faces)), reverse=True
        )
        ids: dict[int, int] = {}
        for overlap, i, j in pairs:
            if overlap < MATCH_IOU:
                break
            if i not in ids.values() and j not in ids:
                ids[j] = i
        for j in range(len(faces)):
            if j not in ids:
                ids[j], self._next_id = self._next_id, self._next_id + 1
            self._tracks[ids[j]] = _Track(faces[j], self._frame)
        self._tracks = {i: t for i, t in self._tracks.items() if self._frame - t.seen <= MAX_GAP}
        return sorted((ids[j], faces[j]) for j in range(len(faces)))
