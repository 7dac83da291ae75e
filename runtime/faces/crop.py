"""Square face crops for the model, and small mouth patches for the speaker choice."""

from __future__ import annotations

import numpy as np

from avemo.deps import require
from avemo.runtime.faces.detectors import Face

MOUTH_PATCH = (24, 16)  # width, height of the normalised mouth patch


def _cv2():
    return require("cv2", "pip install 'avemo[runtime]'")


def square_crop(rgb: np.ndarray, box: tuple[float, ...], margin: float, size: int) -> np.ndarray:
    """[size, size, 3] crop centred on ``box``, its larger side plus ``margin`` per side.

    Where the crop leaves the frame the edge colour is repeated, so the face stays centred.
    """
    cv2 = _cv2()
    x, y, bw, bh = box
    side = max(bw, bh) * (1 + 2 * margin)
    cx, cy = x + bw / 2, y + bh / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x1, y1 = round(cx + side / 2), round(cy + side / 2)
    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return cv2.resize(rgb[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def mouth_region(face: Face) -> tuple[float, float, float, float]:
    """(x, y, w, h) of the mouth: around the mouth corners (YuNet), else the box's lower middle (Haar)."""
    if face.landmarks is not None:
        (rx, ry), (lx, ly) = face.landmarks[3], face.landmarks[4]
        width = max(np.hypot(lx - rx, ly - ry), 1.0)
        cx, cy = (rx + lx) / 2, (ry + ly) / 2
        # The lips open downwards from the corners' line: more room below than above.
        return cx - 0.8 * width, cy - 0.5 * width, 1.6 * width, 1.1 * width
    x, y, w, h = face.box
    return x + 0.25 * w, y + 0.62 * h, 0.5 * w, 0.33 * h


def mouth_patch(rgb: np.ndarray, face: Face) -> np.ndarray:
    """The mouth region in grey, resized to ``MOUTH_PATCH`` and normalised (zero mean, unit variance)."""
    cv2 = _cv2()
    x, y, w, h = mouth_region(face)
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(rgb.shape[1], round(x + w)), min(rgb.shape[0], round(y + h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros(MOUTH_PATCH[::-1], np.float32)
    gray = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    patch = cv2.resize(gray, MOUTH_PATCH, interpolation=cv2.INTER_AREA).astype(np.float32)
    return (patch - patch.mean()) / (patch.std() + 4.0)  # + 4 grey levels: flat patches stay near zero
