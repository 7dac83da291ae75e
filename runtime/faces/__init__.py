"""Faces, from sampled frames to the model's crops: detect (``detectors``), track (``tracking``), choose
the speaker (``speaker``), crop (``crop``); ``pipeline`` joins them for training and serving alike."""

from avemo.runtime.faces.detectors import Face, FaceDetector, open_detector
from avemo.runtime.faces.pipeline import ClipCollector, ClipFaces, FacePipeline, features_for_detector, preference

__all__ = [
    "ClipCollector",
    "ClipFaces",
    "Face",
    "FaceDetector",
    "FacePipeline",
    "features_for_detector",
    "open_detector",
    "preference",
]
