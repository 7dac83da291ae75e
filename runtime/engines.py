"""Everything about TensorRT engines that needs no TensorRT: names, profiles, buffer sizes, version rules.

Engines are specific to a GPU and a TensorRT version, so they live under
``MODELS/engines/<gpu>-sm<cc>-trt<version>/avemo_<graph>_<precision>.engine``
with a JSON sidecar; loading one on another GPU or TensorRT version is
refused with the command that rebuilds it. The TensorRT 10 / 11 differences
(precision builder flags vs strongly typed networks) are in ``build_flags``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import NUM_LABELS, PRECISION_DIRS, PROBS, WEIGHTS_FILE, graph_file
from avemo.errors import AvemoError
from avemo.io import atomic_write_json
from avemo.runtime.manifest import Manifest

ENGINES_DIR = "engines"
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
SUPPORTED_TRT_MAJOR = (10, 11)  # JetPack 6.x/7.x ship 10.x; desktop 11.x is strongly typed

Shape = tuple[int, ...]


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


def build_flags(trt_version: str, precision: str) -> tuple[list[str], list[str]]:
    """(network creation flags, builder config flags) by their TensorRT enum names.

    TensorRT 10: FP16 / INT8 builder flags select precisions (INT8 also for Q/DQ graphs).
    TensorRT 11: those flags and the INT8 calibrators are gone; the network is
    STRONGLY_TYPED and the graph's own types decide (the fp16 mixed graph, the Q/DQ graph).
    """
    if precision not in ENGINE_PRECISIONS:
        raise AvemoError(f"unknown engine precision {precision!r}; expected one of {ENGINE_PRECISIONS}")
    major = trt_major(trt_version)
    if major not in SUPPORTED_TRT_MAJOR:
        wanted = " or ".join(f"{m}.x" for m in SUPPORTED_TRT_MAJOR)
        raise AvemoError(f"TensorRT {trt_version} is not supported; use TensorRT {wanted}")
    if major >= 11:
        return ["STRONGLY_TYPED"], []
    return [], {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[precision]


def engine_path(models: Path, device: Device, modality: str, precision: str) -> Path:
    return Path(models) / ENGINES_DIR / device.tag() / f"avemo_{modality}_{precision}.engine"


def _dims(shape: list[Any], axes: dict[str, tuple[int, int, int]], which: int) -> Shape:
    return tuple(int(axes[d][which]) if isinstance(d, str) else int(d) for d in shape)


def profiles(manifest: Manifest, modality: str) -> dict[str, tuple[Shape, Shape, Shape]]:
    """min / opt / max shape of every input of a graph, from the manifest's profile ranges."""
    axes = {k: tuple(v) for k, v in manifest.data["profiles"].items()}
    spec = manifest.data["graphs"][modality]["inputs"]
    return {
        i["name"]: (_dims(i["shape"], axes, 0), _dims(i["shape"], axes, 1), _dims(i["shape"], axes, 2)) for i in spec
    }


def buffer_bytes(manifest: Manifest, modality: str) -> dict[str, int]:
    """Bytes to allocate per input and output so that every shape of the profile fits."""
    sizes = {}
    for spec in manifest.data["graphs"][modality]["inputs"]:
        max_shape = profiles(manifest, modality)[spec["name"]][2]
        sizes[spec["name"]] = int(np.prod(max_shape)) * np.dtype(spec["dtype"]).itemsize
    max_batch = manifest.data["profiles"]["batch"][2]
    sizes[PROBS] = max_batch * NUM_LABELS * np.dtype(np.float32).itemsize
    return sizes


def write_sidecar(engine: Path, device: Device, manifest: Manifest, modality: str, precision: str) -> None:
    """The JSON beside an engine: what it was built for and from."""
    folder = PRECISION_DIRS[precision]
    source, weights = (name if folder == "." else f"{folder}/{name}" for name in (graph_file(modality), WEIGHTS_FILE))
    atomic_write_json(
        engine.with_suffix(".json"),
        {
            "device": asdict(device),
            "modality": modality,
            "precision": precision,
            "profile": {k: list(map(list, v)) for k, v in profiles(manifest, modality).items()},
            "source": source,
            "source_sha256": manifest.data["files"].get(source),
            "weights_sha256": manifest.data["files"].get(weights),
        },
    )


def check_engine(engine: Path, device: Device) -> dict[str, Any]:
    """Read an engine's sidecar; refuse an engine built for another GPU or TensorRT version."""
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
    return meta
