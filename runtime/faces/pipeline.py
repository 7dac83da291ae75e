"""The face pipeline, from sampled frames to the model's crops: detect, track, choose the speaker, crop.

``FacePipeline`` is made once per model (it opens the detector the model was
trained with and checks it); ``FacePipeline.clip()`` starts a per-clip
collector that takes the sampled frames one by one and, at the end, returns the
crops of the chosen face. Training (``avemo prepare``) and serving (``avemo
infer``) both go through here, so their crops are made the same way.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avemo.config import FeatureConfig
from avemo.contract import FACE_DETECTORS, FACE_MODES
from avemo.errors import AvemoError
from avemo.runtime.faces.crop import mouth_patch, square_crop
from avemo.runtime.faces.detectors import Face, open_detector
from avemo.runtime.faces.speaker import SpeakerChoice, audio_activity, choose_speaker
from avemo.runtime.faces.tracking import FaceTracker

STABLE_SHARE = 0.5  # of the strongest track's strength: a steady face, chosen among others by its size


@dataclass
class ClipFaces:
    """The crops of one clip and how they were chosen."""

    crops: list[np.ndarray]  # [S, S, 3] uint8, one per sampled frame where the chosen face was found
    frames_sampled: int
    face: dict[str, Any] = field(default_factory=dict)  # box, choice, confidence, faces_seen
    times: list[float] = field(default_factory=list)  # the media time of each crop's frame
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # each crop's face, x y w h


class FacePipeline:
    """The model's face settings (detector, resolution, margin, crop size) and the speaker-choice mode.

    ``detector`` overrides the one the model was trained with: allowed, but
    warned about (on stderr and in ``notes``), since crops then differ from training.
    """

    def __init__(
        self,
        features: FeatureConfig,
        mode: str = "speaker",
        detector: str | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        """``providers`` / ``threads``: ONNX Runtime's for YuNet (the Recognizer passes its own)."""
        if mode not in FACE_MODES:
            raise AvemoError(f"unknown face mode {mode!r}; expected one of {', '.join(FACE_MODES)}")
        self.features, self.mode = features, mode
        self.detector = open_detector(detector or features.face_detector, providers, threads)
        self.notes: list[str] = []
        trained = f"{features.face_detector} (sha256 {features.face_detector_sha256[:12] or 'not recorded'})"
        used = f"{self.detector.name} (sha256 {self.detector.sha256[:12]})"
        recorded = features.face_detector_sha256  # the weights decide; a name only where no hash was recorded
        if (self.detector.sha256 != recorded) if recorded else (self.detector.name != features.face_detector):
            if detector is None:  # the model's own detector, yet other weights: never silently
                raise AvemoError(
                    f"the installed face detector {used} is not the one this model was trained with: {trained}; "
                    "install the same package version, or pass --face-detector to accept the difference"
                )
            note = f"face detector {used} differs from the training detector {trained}: crops differ from training"
            print(f"WARNING: {note}", file=sys.stderr)
            self.notes.append(note)

    def clip(self) -> ClipCollector:
        return ClipCollector(self)

    def crops(self, rgb: np.ndarray, found: list[tuple[int, Face]]) -> dict[int, np.ndarray]:
        """The model's square crop of each found face, by track id."""
        f = self.features
        return {i: square_crop(rgb, face.box, f.face_margin, f.face_size) for i, face in found}

    def tracker(self) -> FaceTracker:
        """A tracker with the model's detector and detection size (one per clip or stream)."""
        return FaceTracker(self.detector, self.features.face_detect_side)


class ClipCollector:
    """Takes one clip's sampled frames (``add``), then gives its crops (``finish``)."""

    def __init__(self, pipeline: FacePipeline) -> None:
        self.pipeline = pipeline
        self.tracker = pipeline.tracker()
        self.times: list[float] = []
        self.frames: list[dict[int, tuple[Face, np.ndarray]]] = []  # per frame: track -> (face, crop)
        self.motion: dict[int, dict[int, float]] = {}  # track -> frame -> mouth change since the frame before
        self._previous: tuple[np.ndarray, set[int]] | None = None  # last frame and its tracks (speaker mode)

    def add(
        self,
        time: float,
        rgb: np.ndarray,
        found: list[tuple[int, Face]] | None = None,
        crops: dict[int, np.ndarray] | None = None,
    ) -> None:
        """One sampled frame. A stream whose windows overlap runs one tracker and crops each frame
        once, then hands ``found`` (track id, face) and ``crops`` (by track id) to every window."""
        k = len(self.frames)
        found = self.tracker.update(rgb) if found is None else found
        crops = self.pipeline.crops(rgb, found) if crops is None else crops
        self.times.append(time)
        self.frames.append({i: (face, crops[i]) for i, face in found})
        if self.pipeline.mode == "speaker" and len(found) > 1:  # a choice to make only with several faces
            if self._previous is not None:
                before, tracks = self._previous
                for i, face in found:
                    if i in tracks:
                        change = np.abs(mouth_patch(rgb, face) - mouth_patch(before, face))
                        self.motion.setdefault(i, {})[k] = float(change.mean())
            self._previous = (rgb, {i for i, _ in found})
        else:
            self._previous = None

    def finish(self, samples: np.ndarray | None = None, start: float = 0.0) -> ClipFaces:
        """The chosen face's crops; ``samples`` (16 kHz mono from ``start``) inform the speaker choice."""
        tracks = {i for frame in self.frames for i in frame}
        if self.pipeline.mode == "speaker" and tracks:
            activity = audio_activity(samples, self.pipeline.features.sample_rate, self.times, start)
            choice = choose_speaker({i: self.motion.get(i, {}) for i in tracks}, activity)
        else:
            choice = SpeakerChoice(None, "largest", 0.0)
        order = [choice.track] if choice.track is not None else preference(self.frames)
        picked = [
            (t, frame[next(i for i in order if i in frame)])
            for t, frame in zip(self.times, self.frames, strict=True)
            if any(i in frame for i in order)
        ]
        chosen = [face_crop for _, face_crop in picked]
        info: dict[str, Any] = {"faces_seen": len(tracks)}
        if chosen:
            boxes = np.array([face.box for face, _ in chosen])
            info.update(
                box=[round(float(v), 1) for v in np.median(boxes, axis=0)],  # x, y, w, h: the chosen face's median
                choice=choice.method,
                confidence=round(choice.confidence, 3),
                score=round(float(np.mean([face.score for face, _ in chosen])), 3),  # the detector's, mean
            )
            if choice.scores:
                info["correlations"] = {str(i): round(s, 3) for i, s in sorted(choice.scores.items())}
        return ClipFaces(
            [crop for _, crop in chosen], len(self.frames), info, [t for t, _ in picked], [f.box for f, _ in chosen]
        )


def preference(frames: list[dict[int, tuple[Face, np.ndarray]]]) -> list[int]:
    """Track ids in the order the "largest" choice takes them, frame by frame: the first one in view.

    A track's strength is the sum of its scores over the frames it was seen in (score and
    stability together); tracks within ``STABLE_SHARE`` of the strongest come first, larger ones
    before smaller (two steady faces: the larger), then the rest by strength (the chosen face's
    gaps are filled by its own fragments before anything else)."""
    scores: dict[int, list[float]] = {}
    areas: dict[int, list[float]] = {}
    for frame in frames:
        for i, (face, _) in frame.items():
            scores.setdefault(i, []).append(face.score)
            areas.setdefault(i, []).append(face.area)
    strength = {i: sum(s) for i, s in scores.items()}
    best = max(strength.values(), default=0.0)
    steady = sorted((i for i in strength if strength[i] >= STABLE_SHARE * best), key=lambda i: -np.median(areas[i]))
    return steady + sorted((i for i in strength if i not in steady), key=lambda i: -strength[i])


def features_for_detector(features: FeatureConfig, name: str) -> FeatureConfig:
    """``features`` with the named detector, its weights' hash, and the margin and size that suit it."""
    import dataclasses

    detector = open_detector(name)
    settings = FACE_DETECTORS.get(detector.name, FACE_DETECTORS["yunet"])  # a YuNet file: YuNet's settings
    return dataclasses.replace(
        features,
        face_detector=detector.name,
        face_detector_sha256=detector.sha256,
        face_margin=settings["margin"],
        face_detect_side=settings["detect_side"],
    )
