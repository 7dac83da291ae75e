"""Face detection and cropping (OpenCV only: no torch, nothing downloaded).

The default detector is OpenCV's Haar cascade, shipped inside opencv-python 4.x.
``FaceCropper(detector=PATH)`` uses a YuNet ONNX model through
``cv2.FaceDetectorYN`` for better recall.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from avemo.config import FeatureConfig
from avemo.deps import require
from avemo.errors import AvemoError

DETECT_MAX_SIDE = 480  # detection runs on a downscaled copy; crops use full resolution
MIN_FACE_FRACTION = 1 / 8  # faces smaller than this share of the short side are ignored (and cost time)
# Tracking: with the previous frame's face known, search a window of this many face sides around it,
# for faces of 0.7-1.4x its size, before falling back to the whole frame (most of the detection time).
TRACK_WINDOW = 2.5
TRACK_SCALE = (0.7, 1.4)

Box = tuple[int, int, int, int]  # x, y, w, h in full-resolution pixels


def _cv2():
    return require("cv2", "pip install 'avemo[runtime]'")


class FaceCropper:
    """Finds the largest face in an RGB frame and returns a square crop of ``face_size``.

    Safe to share between threads: OpenCV's detectors are not, so calls are serialised.
    """

    def __init__(self, features: FeatureConfig, detector: Path | None = None) -> None:
        cv2 = _cv2()
        self.size = features.face_size
        self.margin = features.face_margin
        self.yunet = None
        self._lock = threading.Lock()
        if detector is not None:
            if not Path(detector).is_file():
                raise AvemoError(f"{detector}: face detector model not found")
            try:
                self.yunet = cv2.FaceDetectorYN.create(str(detector), "", (320, 320), 0.6, 0.3, 50)
            except cv2.error as exc:
                raise AvemoError(f"{detector}: not a YuNet face detector model ({exc})") from None
        else:
            cascades = getattr(getattr(cv2, "data", None), "haarcascades", None)
            if cascades is None:
                raise AvemoError("this OpenCV ships no Haar cascades (OpenCV 5?): install opencv-python-headless<5")
            self.haar = cv2.CascadeClassifier(str(Path(cascades) / "haarcascade_frontalface_default.xml"))
            if self.haar.empty():
                raise AvemoError("OpenCV's Haar face cascade could not be loaded")

    def detect(self, rgb: np.ndarray, near: Box | None = None) -> Box | None:
        """The largest face box (x, y, w, h) in full-resolution pixels, or None.

        ``near`` (the face found in the previous sampled frame) first restricts the
        Haar search to a window around it and to faces of a similar size; the whole
        frame is searched when that finds nothing.
        """
        cv2 = _cv2()
        h, w = rgb.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = (
            cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        )
        if near is not None and self.yunet is None:
            found = self._haar_near(small, [round(v * scale) for v in near])
            if found is not None:
                return tuple(round(v / scale) for v in found)  # type: ignore[return-value]
        if self.yunet is not None:
            with self._lock:
                self.yunet.setInputSize((small.shape[1], small.shape[0]))
                _, found = self.yunet.detect(small[:, :, ::-1].copy())
            boxes = [] if found is None else [tuple(f[:4]) for f in found]
        else:
            gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
            side = max(24, round(min(gray.shape) * MIN_FACE_FRACTION))
            with self._lock:
                found = self.haar.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
            boxes = list(found)
        if len(boxes) == 0:
            return None
        x, y, bw, bh = max(boxes, key=lambda b: b[2] * b[3])
        return round(x / scale), round(y / scale), round(bw / scale), round(bh / scale)

    def _haar_near(self, small: np.ndarray, near: list[int]) -> Box | None:
        cv2 = _cv2()
        x, y, bw, bh = near
        side = max(bw, bh)
        cx, cy, half = x + bw / 2, y + bh / 2, side * TRACK_WINDOW / 2
        x0, y0 = max(0, round(cx - half)), max(0, round(cy - half))
        x1, y1 = min(small.shape[1], round(cx + half)), min(small.shape[0], round(cy + half))
        if x1 - x0 < side or y1 - y0 < side:
            return None
        gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(small[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY))
        lo, hi = (max(24, round(side * f)) for f in TRACK_SCALE)
        with self._lock:
            found = self.haar.detectMultiScale(
                gray, scaleFactor=1.1, minNeighbors=5, minSize=(lo, lo), maxSize=(hi, hi)
            )
        if len(found) == 0:
            return None
        fx, fy, fw, fh = max(found, key=lambda b: b[2] * b[3])
        return int(fx + x0), int(fy + y0), int(fw), int(fh)

    def crop(self, rgb: np.ndarray) -> np.ndarray | None:
        """Square RGB crop [S, S, 3] around the largest face (with margin), or None if no face."""
        return self.track(rgb, None)[0]

    def track(self, rgb: np.ndarray, near: Box | None) -> tuple[np.ndarray | None, Box | None]:
        """(crop, box) for a frame, searching near the previous frame's box first (see ``detect``)."""
        box = self.detect(rgb, near)
        if box is None:
            return None, None
        return self._crop_box(rgb, box), box

    def _crop_box(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        cv2 = _cv2()
        x, y, bw, bh = box
        side = max(bw, bh) * (1 + 2 * self.margin)
        cx, cy = x + bw / 2, y + bh / 2
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        x1, y1 = round(cx + side / 2), round(cy + side / 2)
        h, w = rgb.shape[:2]
        # Pad with the edge colour where the margin leaves the frame, so the face stays centred.
        pad = max(0, -x0, -y0, x1 - w, y1 - h)
        if pad:
            rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
        return cv2.resize(rgb[y0:y1, x0:x1], (self.size, self.size), interpolation=cv2.INTER_AREA)
