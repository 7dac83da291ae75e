"""Everything about TensorRT engines that needs no TensorRT: names, profiles, buffer sizes, version rules.

Engines are specific to a GPU and a TensorRT version, so they live under
``MODELS/engines/<gpu>-sm<cc>-trt<version>/avemo_<graph>_<precision>.engine``
with a JSON sidecar; loading one on another GPU or TensorRT version is
refused with the command that rebuilds it, and so is an engine whose source
graph or weights changed since it was built (a re-export or re-calibration).
How networks are built (strongly typed, TF32 off for fp32) is in ``build_flags``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import (
    ENGINE_PRECISIONS,
    NUM_LABELS,
    PROBS,
    PROFILE_BATCH,
    PROFILE_BUCKETS,
    WEIGHTS_FILE,
    graph_file,
)
from avemo.errors import AvemoError
from avemo.io import atomic_write_json
from avemo.runtime.models.manifest import Manifest

ENGINES_DIR = "engines"
SUPPORTED_TRT_MAJOR = (10, 11)  # JetPack 6.x/7.x ship 10.x; desktop 11.x is strongly typed

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max) shape
Buckets = Sequence[Sequence[Any]]  # PROFILE_BUCKETS, or as a sidecar's JSON holds them


@dataclass(frozen=True)
class Device:
    """The GPU and TensorRT an engine is built for."""

    gpu: str
    compute_capability: tuple[int, int]
    trt_version: str

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"{self.gpu} (sm{major}{minor}, TensorRT {self.trt_version})"

    def tag(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        major, minor = self.compute_capability
        return f"{slug}-sm{major}{minor}-trt{self.trt_version}"


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise AvemoError(f"unrecognised TensorRT version {version!r}") from None


def build_flags(trt_version: str, precision: str) -> tuple[list[str], list[str], list[str]]:
    """(network creation flags, builder flags to set, builder flags to clear) by their TensorRT enum names.

    Every network is STRONGLY_TYPED, on 10.x as on 11.x (where it is the only
    mode): the graph's own types decide, so the fp16 graph's fp32 islands
    (LayerNorm, Softmax, the length division) stay fp32 and the INT8 graph runs
    exactly its Q/DQ nodes; the FP16 / INT8 flags, mere hints on 10.x and gone
    on 11.x, are never set. fp32 clears TF32 (on by default in TensorRT), so
    fp32 means fp32 and meets the export's 1e-4 parity.
    """
    if precision not in ENGINE_PRECISIONS:
        raise AvemoError(f"unknown engine precision {precision!r}; expected one of {ENGINE_PRECISIONS}")
    major = trt_major(trt_version)
    if major not in SUPPORTED_TRT_MAJOR:
        wanted = " or ".join(f"{m}.x" for m in SUPPORTED_TRT_MAJOR)
        raise AvemoError(
            f"TensorRT {trt_version} is not supported; use TensorRT {wanted} (JetPack 6.1/6.2 ship 10.3; "
            "JetPack 6.0 ships 8.6)"
        )
    return ["STRONGLY_TYPED"], [], ["TF32"] if precision == "fp32" else []


def engine_path(models: Path, device: Device, modality: str, precision: str) -> Path:
    return Path(models) / ENGINES_DIR / device.tag() / f"avemo_{modality}_{precision}.engine"


def _dims(shape: list[Any], axes: dict[str, tuple[int, int, int]], which: int) -> Shape:
    return tuple(int(axes[d][which]) if isinstance(d, str) else int(d) for d in shape)


def batch_limit(manifest: Manifest, max_batch: int | None = None) -> int:
    """Clips per engine call: the manifest's profile maximum, or less where ``max_batch`` says so."""
    largest = manifest.max_batch
    return largest if max_batch is None else max(1, min(int(max_batch), largest))


def default_max_batch(total_memory: int, integrated: bool) -> int:
    """Clips per call an engine is built for on a GPU: 4 on a shared-memory device of 8 GiB or less (a Jetson
    Orin Nano: at 16 clips of 30 s the input buffers alone, two staging slots of three engines with uint8
    faces, take about 0.45 GiB per Recognizer, plus activations), else the profile's 16. ``avemo build
    --max-batch`` overrides it."""
    return 4 if integrated and total_memory <= 8 << 30 else PROFILE_BATCH[2]


def profiles(manifest: Manifest, modality: str, max_batch: int | None = None) -> Profile:
    """min / opt / max shape of every input of a graph, from the manifest's profile ranges (the batch axis
    capped at ``max_batch``): the range every engine takes, and the one profile of engines built before
    ``bucket_profiles``."""
    axes = manifest.profiles
    high = batch_limit(manifest, max_batch)
    low, opt, _ = axes["batch"]
    axes["batch"] = (min(low, high), min(opt, high), high)
    return _profile(manifest, modality, axes)


def _profile(manifest: Manifest, modality: str, axes: dict[str, tuple[int, int, int]]) -> Profile:
    spec = manifest.inputs(modality)
    return {
        i["name"]: (_dims(i["shape"], axes, 0), _dims(i["shape"], axes, 1), _dims(i["shape"], axes, 2)) for i in spec
    }


def bucket_profiles(
    manifest: Manifest, modality: str, max_batch: int | None = None, buckets: Buckets | None = PROFILE_BUCKETS
) -> list[Profile]:
    """One profile per clip-length bucket (``PROFILE_BUCKETS``): each takes clips from the shortest up to its
    seconds (the last up to the manifest's maximum) and 1..``max_batch`` clips, tuned (opt) for its full length
    at its batch. ``buckets`` None: the single ``profiles`` range of an engine built before buckets."""
    if not buckets:
        return [profiles(manifest, modality, max_batch)]
    axes = manifest.profiles
    high = batch_limit(manifest, max_batch)
    rates = {"audio_frames": manifest.features.frames_per_second, "face_frames": manifest.features.fps}
    out = []
    for k, (seconds, batch) in enumerate(buckets):
        last = k == len(buckets) - 1
        ranges = {"batch": (min(axes["batch"][0], high), high if batch is None else min(int(batch), high), high)}
        for axis, rate in rates.items():
            lo, _, hi = axes[axis]
            top = hi if last else min(hi, max(lo, round(float(seconds) * rate)))
            ranges[axis] = (lo, top, top)
        out.append(_profile(manifest, modality, ranges))
    return out


def pick_profile(limits: list[Profile], shapes: dict[str, Shape]) -> tuple[int, dict[str, Shape]]:
    """(index, padded shapes): the first profile that takes every input, and each input's shape padded within
    it. With buckets, every time axis (any dynamic axis but the batch) is padded up to the next multiple of
    the first bucket's length (5 s: 500 audio frames, 15 face frames), within the profile: a live window is
    one shape, a file's clips one of six; a single profile only pads up to its minimum. Exact: the length
    inputs mask the padding (the caller writes zeros there)."""
    first = limits[0]
    for index, profile in enumerate(limits):
        padded: dict[str, Shape] = {}
        for name, shape in shapes.items():
            lo, _, hi = profile[name]
            if len(shape) != len(hi) or any(n > h for n, h in zip(shape, hi, strict=True)):
                break
            step = [first[name][2][a] if len(limits) > 1 and a and lo[a] != hi[a] else 1 for a in range(len(hi))]
            padded[name] = tuple(
                max(low, min(h, math.ceil(n / s) * s)) for n, low, h, s in zip(shape, lo, hi, step, strict=True)
            )
        else:
            return index, padded
    raise AvemoError(f"no engine profile takes the shapes {shapes}")


def _as_json(limits: list[Profile]) -> list[dict[str, list[list[int]]]]:
    return [{k: list(map(list, v)) for k, v in p.items()} for p in limits]


def buffer_bytes(manifest: Manifest, modality: str, max_batch: int | None = None) -> dict[str, int]:
    """Bytes to allocate per input and output so that every shape of the profile fits."""
    sizes = {}
    limits = profiles(manifest, modality, max_batch)
    for spec in manifest.inputs(modality):
        sizes[spec["name"]] = int(np.prod(limits[spec["name"]][2])) * np.dtype(spec["dtype"]).itemsize
    sizes[PROBS] = batch_limit(manifest, max_batch) * NUM_LABELS * np.dtype(np.float32).itemsize
    return sizes


def sources(manifest: Manifest, modality: str, precision: str) -> dict[str, str | None]:
    """The graph and weight files an engine is built from, and their sha256 in the manifest."""
    folder = manifest.graph_dir(precision, tensorrt=True)
    source, weights = (name if folder == "." else f"{folder}/{name}" for name in (graph_file(modality), WEIGHTS_FILE))
    files = manifest.files
    return {"source": source, "source_sha256": files.get(source), "weights_sha256": files.get(weights)}


def write_sidecar(
    engine: Path,
    device: Device,
    manifest: Manifest,
    modality: str,
    precision: str,
    max_batch: int | None = None,
    buckets: Buckets | None = PROFILE_BUCKETS,
    **facts: Any,
) -> None:
    """The JSON beside an engine: what it was built for and from, its length buckets and their profiles (and
    ``facts``: parity, memory)."""
    atomic_write_json(
        engine.with_suffix(".json"),
        {
            "device": asdict(device),
            "modality": modality,
            "precision": precision,
            "max_batch": batch_limit(manifest, max_batch),
            "buckets": None if buckets is None else [list(b) for b in buckets],
            "profiles": _as_json(bucket_profiles(manifest, modality, max_batch, buckets)),
            **sources(manifest, modality, precision),
            **facts,
        },
    )


def rebuild_command(manifest: Manifest, precision: str) -> str:
    return f"avemo build {manifest.root} --precision {precision}"


def check_engine(engine: Path, device: Device, manifest: Manifest | None = None) -> dict[str, Any]:
    """Read an engine's sidecar; refuse an engine built for another GPU or TensorRT version, or (given the
    manifest) from another graph, other weights or other profiles than the model's own now. The profiles are
    recomputed from the sidecar's own ``buckets`` (none: one profile, an engine built before buckets, whose
    sidecar says ``profile``), so an engine built with another bucket set reads as built."""
    sidecar = engine.with_suffix(".json")
    if not engine.is_file() or not sidecar.is_file():
        raise AvemoError(f"{engine}: no engine (or its .json) here; build it with `avemo build`")
    meta = json.loads(sidecar.read_text())
    built = Device(meta["device"]["gpu"], tuple(meta["device"]["compute_capability"]), meta["device"]["trt_version"])
    if built != device:
        raise AvemoError(
            f"{engine}: built for {built.describe()} but this is {device.describe()}; "
            "rebuild it here with `avemo build`"
        )
    if manifest is not None:
        limits = bucket_profiles(manifest, meta["modality"], meta.get("max_batch"), meta.get("buckets"))
        now: dict[str, Any] = {**sources(manifest, meta["modality"], meta["precision"]), "profile": _as_json(limits)}
        built_with = meta["profiles"] if "buckets" in meta else [meta.get("profile")]
        stale = [k for k in ("source_sha256", "weights_sha256") if meta.get(k) != now[k]]
        stale += ["profile"] if built_with != now["profile"] else []
        if stale:
            what = ", ".join(k.replace("_sha256", "") for k in stale)
            raise AvemoError(
                f"{engine}: stale, built from another {what} than the model's now (re-exported or re-calibrated "
                f"since); rebuild it: {rebuild_command(manifest, meta['precision'])}"
            )
    return meta


def check_io(engine: Any, manifest: Manifest, modality: str, path: Path, nptype: Any, limits: list[Profile]) -> None:
    """Compare a deserialised engine's I/O tensors with the manifest's graph: names, modes, dtypes, shapes and
    the input profiles (``limits``, as ``bucket_profiles`` gives them). ``nptype``: TensorRT's DataType ->
    numpy type."""
    wanted = {s["name"]: ("INPUT", s) for s in manifest.inputs(modality)}
    wanted |= {s["name"]: ("OUTPUT", s) for s in manifest.outputs(modality)}
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    problems = []
    if sorted(names) != sorted(wanted):
        problems.append(f"tensors {sorted(names)}, the manifest's {sorted(wanted)}")
    if engine.num_optimization_profiles != len(limits):
        problems.append(f"{engine.num_optimization_profiles} optimisation profiles, the sidecar's {len(limits)}")
        limits = []
    for name in set(names) & set(wanted):
        mode, spec = wanted[name]
        if engine.get_tensor_mode(name).name != mode:
            problems.append(f"{name} is {engine.get_tensor_mode(name).name}, not {mode}")
        dtype = np.dtype(nptype(engine.get_tensor_dtype(name)))
        if dtype != np.dtype(spec["dtype"]):
            problems.append(f"{name} is {dtype}, not {spec['dtype']}")
        shape = tuple(engine.get_tensor_shape(name))
        expected = tuple(-1 if isinstance(d, str) else int(d) for d in spec["shape"])
        if len(shape) != len(expected) or any(e != -1 and d != e for d, e in zip(shape, expected, strict=False)):
            problems.append(f"{name} has shape {shape}, the manifest {expected}")
        for index, limit in enumerate(limits if mode == "INPUT" else []):
            profile = tuple(tuple(s) for s in engine.get_tensor_profile_shape(name, index))
            if profile != limit[name]:
                problems.append(f"{name} profile {index} {profile}, the manifest's {limit[name]}")
    if problems:
        raise AvemoError(f"{path}: does not match the model's manifest: " + "; ".join(problems))
