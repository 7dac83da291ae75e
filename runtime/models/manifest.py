"""manifest.json: what the runtime knows about a model directory, the hash check it relies on, and its one writer.

The runtime reads only the manifest and the graphs; a file whose sha256 does
not match the manifest is refused with a message naming it. The manifest is
checked first (``manifest_checks``): its paths stay inside the folder, its sizes
are bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avemo.config import FeatureConfig, ModelConfig, from_dict
from avemo.contract import FACE_DETECTORS, FACES, FACES_DTYPE, MANIFEST_FILE, PRECISION_DIRS, graph_file
from avemo.errors import AvemoError
from avemo.io import atomic_write_json, jsonable, read_versioned_json, sha256_file
from avemo.runtime.models.checks import check_manifest

MANIFEST_FORMAT = "avemo-models"
MANIFEST_VERSION = 1


class Manifest:
    """A parsed, bounds-checked (and by ``load_manifest``, hash-checked) manifest.json."""

    def __init__(self, root: Path, data: dict[str, Any]) -> None:
        check_manifest(root, data)
        self.root = Path(root)
        self.data = data
        self.model_config: ModelConfig = from_dict(ModelConfig, data["model_config"], str(root / MANIFEST_FILE))

    @property
    def features(self) -> FeatureConfig:
        return self.model_config.features

    @property
    def face_detector(self) -> str:
        """The model's face detector: a packaged name, or the path of its file inside the model folder."""
        name = self.features.face_detector
        return name if name in FACE_DETECTORS else str(self.root / name)

    @property
    def modalities(self) -> list[str]:
        return list(self.data["graphs"])

    @property
    def files(self) -> dict[str, str]:
        """Every file of the folder (relative path) and its sha256."""
        return dict(self.data["files"])

    @property
    def profiles(self) -> dict[str, tuple[int, int, int]]:
        """min / opt / max of every dynamic axis (batch, audio_frames, face_frames)."""
        return {axis: (int(lo), int(opt), int(hi)) for axis, (lo, opt, hi) in self.data["profiles"].items()}

    @property
    def max_batch(self) -> int:
        """The most clips one call of a graph takes (the profile's maximum)."""
        return self.profiles["batch"][2]

    @property
    def checkpoint(self) -> str | None:
        """The training checkpoint the graphs were exported from, where the manifest records it."""
        return self.data.get("source", {}).get("checkpoint")

    def inputs(self, modality: str) -> list[dict[str, Any]]:
        """Name, dtype and shape (named dynamic axes) of each input of ``modality``'s graph."""
        return list(self.data["graphs"][modality]["inputs"])

    @property
    def faces_dtype(self) -> str:
        """The dtype every graph of the model takes faces in: uint8, or float32 in [0, 1] (exported before)."""
        found = [s["dtype"] for m in self.modalities for s in self.inputs(m) if s["name"] == FACES]
        return found[0] if found else FACES_DTYPE

    def faces_note(self) -> str | None:
        """What to tell every user of a model whose graphs take float faces (scaled on the host, 4x the bytes)."""
        if self.faces_dtype == FACES_DTYPE:
            return None
        return (
            f"{self.root} takes faces as {self.faces_dtype} (exported by an older avemo): they are scaled on the "
            "host; re-export the model (`avemo export`) to take faces as uint8"
        )

    def outputs(self, modality: str) -> list[dict[str, Any]]:
        return list(self.data["graphs"][modality]["outputs"])

    def tolerance(self, precision: str) -> float:
        """The parity tolerance ``precision``'s graphs were checked with at export or calibration."""
        return float(self.data["precisions"][precision]["parity_tolerance"])

    @property
    def precisions(self) -> list[str]:
        return list(self.data["precisions"])

    def accuracy_warning(self, precision: str) -> str | None:
        """What to tell every user of ``precision``'s graphs when calibration found them below the target."""
        entry = self.data["precisions"].get(precision, {})
        if entry.get("meets_accuracy_target", True):
            return None
        return (
            f"{precision} graphs missed their accuracy target at calibration (meets_accuracy_target: false; "
            f"see {self.root / entry.get('report', 'int8/accuracy.md')}): expect more label changes than fp32"
        )

    def graph_path(self, modality: str, precision: str = "fp32", tensorrt: bool = False) -> Path:
        """The ``precision`` graph of ``modality``; with ``tensorrt``, the one engines are built from."""
        if modality not in self.data["graphs"]:
            raise AvemoError(f"{self.root}: no {modality.upper()} graph (this model has {', '.join(self.modalities)})")
        if precision not in self.data["precisions"]:
            how = {
                "int8": f"`avemo calibrate {self.root} --data CACHE`",
                "int8-cpu": "`avemo calibrate` (it keeps int8-cpu only when faster than fp32 here; "
                "--cpu-int8 always forces it)",
            }.get(precision, f"`avemo export RUN --precision {precision} --out {self.root}`")
            raise AvemoError(f"{self.root}: no {precision} graphs (has: {', '.join(self.precisions)}); run {how}")
        return self.root / self.graph_dir(precision, tensorrt) / graph_file(modality)

    def graph_dir(self, precision: str, tensorrt: bool = False) -> str:
        """Folder of the ``precision`` graphs, relative to the root ("." for fp32)."""
        entry = self.data["precisions"].get(precision, {})
        return (tensorrt and entry.get("tensorrt_graphs", {}).get("dir")) or PRECISION_DIRS[precision]

    def graph_sets(self) -> list[tuple[str, str]]:
        """(precision, folder relative to the root) of every graph set shipped: each precision's ONNX Runtime
        graphs and, where they differ, the ones TensorRT builds from (int8/fp16)."""
        sets: list[tuple[str, str]] = []
        for precision in self.precisions:
            for tensorrt in (False, True):
                entry = (precision, self.graph_dir(precision, tensorrt))
                if entry not in sets:
                    sets.append(entry)
        return sets

    def verify_hashes(self, skip_dirs: tuple[str, ...] = ()) -> None:
        """Re-hash every file listed (but those under ``skip_dirs``); raise naming the first missing or changed."""
        for rel, expected in self.files.items():
            if rel.split("/")[0] in skip_dirs:
                continue
            path = self.root / rel
            if not path.is_file():
                raise AvemoError(f"{path}: listed in {MANIFEST_FILE} but missing")
            try:
                digest = sha256_file(path)
            except OSError as exc:
                raise AvemoError(f"{path}: unreadable ({exc.strerror})") from None
            if digest != expected:
                raise AvemoError(
                    f"{path}: sha256 does not match {MANIFEST_FILE} (changed since export); re-export or restore it"
                )


def load_manifest(root: Path, verify: bool = True) -> Manifest:
    """Read ``root/manifest.json`` and (by default) check every file's hash."""
    data = read_versioned_json(
        Path(root) / MANIFEST_FILE,
        MANIFEST_FORMAT,
        MANIFEST_VERSION,
        "manifest",
        f"{root}: no {MANIFEST_FILE}; export a model with `avemo-export RUN --out {root}`",
    )
    manifest = Manifest(Path(root), data)
    if verify:
        manifest.verify_hashes()
    return manifest


def write_manifest(models_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Write ``data`` as ``models_dir/manifest.json`` (atomically; format and version stamped first) and return
    what was written. The one writer: export writes a model's first manifest, calibration its int8 additions,
    each into a staged folder that is swapped in whole after (``avemo.io.replace_tree``)."""
    stamped = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION}
    stamped |= {k: v for k, v in data.items() if k not in stamped}
    atomic_write_json(Path(models_dir) / MANIFEST_FILE, jsonable(stamped))
    return stamped
