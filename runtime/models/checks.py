"""A manifest is input: every path it names stays inside the model folder, every size it gives is bounded.

Checked when a manifest is read, before anything is opened, hashed or allocated from it; a bad
value is one AvemoError naming its key (``precisions.int8.dir``, ``model_config.features.face_size``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

from avemo.config import FeatureConfig, ModelConfig
from avemo.contract import (
    AUDIO_POOLING,
    FACE_DETECTORS,
    GRAPH_INPUTS,
    LABELS,
    MANIFEST_FILE,
    MAX_POSITIONS,
    MODALITIES,
    PRECISION_DIRS,
    graph_file,
)
from avemo.errors import AvemoError

#: Sane bounds of every size a manifest gives (inclusive): far beyond any real model, far below a
#: value that would make the runtime allocate gigabytes (num_mel_bins 1e7, face_size 1e6).
FEATURE_BOUNDS: dict[str, tuple[float, float]] = {
    "sample_rate": (1000, 192_000),
    "num_mel_bins": (1, 512),
    "frame_length_ms": (1.0, 1000.0),
    "frame_shift_ms": (1.0, 1000.0),
    "delta_window": (1, 32),
    "fps": (0.1, 120.0),
    "face_size": (8, 1024),
    "face_margin": (0.0, 4.0),
    "jpeg_quality": (1, 100),
    "face_detect_side": (16, 8192),
    "frame_sampler": (1, 2),
}
PROFILE_BOUNDS: dict[str, int] = {
    "batch": 1024,
    "audio_frames": AUDIO_POOLING * MAX_POSITIONS,
    "face_frames": MAX_POSITIONS,
}
MODEL_INT_MAX = 1 << 16  # layers, widths, heads: the runtime never allocates from them, but types must hold
MAX_FILES = 10_000
SHA256 = re.compile(r"[0-9a-f]{64}")
DTYPES = ("float32", "int64", "uint8")


class Check:
    """Typed access to one manifest's values; every failure names the key and the file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.real_root = self.root.resolve()

    def fail(self, key: str, problem: str) -> AvemoError:
        return AvemoError(f"{self.root / MANIFEST_FILE}: {key} {problem}")

    def get(self, data: Any, key: str, name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
        where = f"{key}.{name}" if key else name
        if not isinstance(data, dict):
            raise self.fail(key or "the manifest", "is not a JSON object")
        if name not in data:
            if required:
                raise self.fail(where, "is missing")
            return None
        value = data[name]
        if not isinstance(value, kind):
            raise self.fail(where, f"has the wrong type ({type(value).__name__})")
        return value

    def number(self, value: Any, key: str, low: float, high: float, integer: bool) -> None:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise self.fail(key, f"= {value!r} is not {'an integer' if integer else 'a number'}")
        if not (math.isfinite(value) and low <= value <= high):
            raise self.fail(key, f"= {value!r} is out of bounds [{low:g}, {high:g}]")

    def path(self, rel: Any, key: str, allow_root: bool = False) -> Path:
        """``root / rel``, refused unless it stays inside the model folder (symlinks followed)."""
        if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
            raise self.fail(key, f"= {rel!r} is not a relative path")
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or (not parts and not allow_root):
            raise self.fail(key, f"= {rel!r} leaves the model folder (only paths inside it are allowed)")
        path = self.root.joinpath(*parts)
        if not path.resolve().is_relative_to(self.real_root):
            raise self.fail(key, f"= {rel!r} is a symlink leaving the model folder")
        return path


def check_manifest(root: Path, data: Any) -> None:
    """Refuse a manifest that names a path outside ``root`` or a size out of bounds (one line, naming the key)."""
    check = Check(root)
    labels = check.get(data, "", "labels", list)
    if tuple(labels) != LABELS:
        raise check.fail("labels", f"= {labels!r} are not avemo's labels {list(LABELS)}")
    _check_config(check, check.get(data, "", "model_config", dict))
    graphs = check.get(data, "", "graphs", dict)
    if not graphs or any(m not in MODALITIES for m in graphs):
        raise check.fail("graphs", f"must name some of {', '.join(MODALITIES)} (has {', '.join(map(str, graphs))})")
    for modality, graph in graphs.items():
        _check_graph(check, f"graphs.{modality}", modality, graph)
    precisions = check.get(data, "", "precisions", dict)
    if "fp32" not in precisions or any(p not in PRECISION_DIRS for p in precisions):
        raise check.fail("precisions", f"must hold fp32 and only {', '.join(PRECISION_DIRS)}")
    for precision, entry in precisions.items():
        _check_precision(check, f"precisions.{precision}", entry)
    files = check.get(data, "", "files", dict)
    if len(files) > MAX_FILES:
        raise check.fail("files", f"lists {len(files)} files (at most {MAX_FILES})")
    for rel, digest in files.items():
        check.path(rel, f"files[{rel!r}]")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise check.fail(f"files[{rel!r}]", "is not a sha256 (64 lowercase hex digits)")
    profiles = check.get(data, "", "profiles", dict)
    for axis, high in PROFILE_BOUNDS.items():
        ranges = check.get(profiles, "profiles", axis, list)
        if len(ranges) != 3:
            raise check.fail(f"profiles.{axis}", "must be [min, opt, max]")
        for i, value in enumerate(ranges):
            check.number(value, f"profiles.{axis}[{i}]", 1, high, integer=True)
        if not ranges[0] <= ranges[1] <= ranges[2]:
            raise check.fail(f"profiles.{axis}", f"= {ranges} is not min <= opt <= max")


def _check_config(check: Check, config: dict[str, Any]) -> None:
    defaults = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        if f.name == "features" or f.name not in config:
            continue
        key, default, value = f"model_config.{f.name}", getattr(defaults, f.name), config[f.name]
        if isinstance(default, bool | str):
            if type(value) is not type(default):
                raise check.fail(key, f"has the wrong type ({type(value).__name__})")
        else:
            check.number(value, key, 0, MODEL_INT_MAX, integer=isinstance(default, int))
    features = check.get(config, "model_config", "features", dict, required=False) or {}
    for name, (low, high) in FEATURE_BOUNDS.items():
        if name in features:
            integer = isinstance(getattr(FeatureConfig(), name), int)
            check.number(features[name], f"model_config.features.{name}", low, high, integer)
    for name in ("face_detector", "face_detector_sha256"):
        check.get(features, "model_config.features", name, str, required=False)
    detector = features.get("face_detector")
    if detector is not None and detector not in FACE_DETECTORS:
        check.path(detector, "model_config.features.face_detector")


def _check_graph(check: Check, key: str, modality: str, graph: Any) -> None:
    if check.get(graph, key, "file", str) != graph_file(modality):
        raise check.fail(f"{key}.file", f"must be {graph_file(modality)}")
    inputs = check.get(graph, key, "inputs", list)
    names = [check.get(spec, f"{key}.inputs[{i}]", "name", str) for i, spec in enumerate(inputs)]
    if tuple(names) != GRAPH_INPUTS[modality]:
        raise check.fail(f"{key}.inputs", f"must be {', '.join(GRAPH_INPUTS[modality])} (has {', '.join(names)})")
    for i, spec in enumerate(inputs):
        if check.get(spec, f"{key}.inputs[{i}]", "dtype", str) not in DTYPES:
            raise check.fail(f"{key}.inputs[{i}].dtype", f"must be one of {', '.join(DTYPES)}")
        for j, dim in enumerate(check.get(spec, f"{key}.inputs[{i}]", "shape", list)):
            if not isinstance(dim, str):
                check.number(dim, f"{key}.inputs[{i}].shape[{j}]", 1, 1 << 16, integer=True)


def _check_precision(check: Check, key: str, entry: Any) -> None:
    check.path(check.get(entry, key, "dir", str), f"{key}.dir", allow_root=True)
    check.number(check.get(entry, key, "parity_tolerance", (int, float)), f"{key}.parity_tolerance", 0, 1, False)
    for name in ("calibration", "report"):
        if check.get(entry, key, name, str, required=False) is not None:
            check.path(entry[name], f"{key}.{name}")
    trt = check.get(entry, key, "tensorrt_graphs", dict, required=False)
    if trt is not None and check.get(trt, f"{key}.tensorrt_graphs", "dir", str, required=False) is not None:
        check.path(trt["dir"], f"{key}.tensorrt_graphs.dir")
