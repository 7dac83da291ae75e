"""`avemo export`: a run's checkpoint -> the graphs of its modalities, weights shared, checked, with a manifest."""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import onnx
import torch

from avemo import __version__
from avemo.config import to_dict
from avemo.contract import (
    BEST_CHECKPOINT,
    EXPORT_PRECISIONS,
    LABELS,
    MANIFEST_FILE,
    PARITY_FILE,
    PARITY_TOLERANCE,
    PRECISION_DIRS,
    WEIGHTS_FILE,
    graph_file,
    input_specs,
    output_specs,
    profile_ranges,
)
from avemo.errors import AvemoError
from avemo.export.fp16 import FP32_OPS, to_fp16
from avemo.export.graphs import export_graph
from avemo.export.weights import share_weights
from avemo.export.wrappers import wrap
from avemo.io import new_tree, replace_tree, sha256_file, tree_hashes
from avemo.runtime.backends.parity import (
    References,
    Samples,
    check_parity,
    parity_samples,
    parity_summary,
    save_references,
)
from avemo.runtime.models.manifest import write_manifest
from avemo.train.checkpoint import load_model, train_config_of


def resolve_checkpoint(run: Path) -> Path:
    run = Path(run)
    return run / BEST_CHECKPOINT if run.is_dir() else run


def _check_out_dir(out: Path, checkpoint_sha: str, force: bool) -> None:
    """The export replaces ``out`` as a whole: refuse another model's folder, or other files, unless --force."""
    if out.exists() and not out.is_dir():
        raise AvemoError(f"{out}: is not a directory")
    if not out.exists() or force or not any(out.iterdir()):
        return
    manifest = out / MANIFEST_FILE
    if not manifest.exists():
        raise AvemoError(f"{out}: holds files without a {MANIFEST_FILE}; or --force to replace it whole")
    try:
        source = json.loads(manifest.read_text()).get("source", {}).get("checkpoint_sha256")
    except (OSError, ValueError, AttributeError):
        source = None
    if source != checkpoint_sha:
        raise AvemoError(f"{out}: holds another model's export ({MANIFEST_FILE}); use --force to replace it")


def export_run(
    run: Path,
    out: Path,
    precisions: tuple[str, ...] = ("fp32",),
    opset: int = 18,
    simplify: bool = True,
    force: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Export, check and describe a run's model; returns the manifest written to ``out``."""
    _check_precisions(precisions, out)
    ckpt = resolve_checkpoint(run)
    model, payload = load_model(ckpt)
    cfg = model.cfg
    ckpt_sha = sha256_file(ckpt)
    out = Path(out)
    _check_out_dir(out, ckpt_sha, force)
    precisions = tuple(dict.fromkeys(("fp32", *precisions)))  # fp32 is always the reference set
    started = time.perf_counter()
    samples = parity_samples(cfg.features, cfg.modalities)
    references = _torch_references(model, samples)
    protos, export_seconds = _export_graphs(model, opset, simplify, log)

    staging = new_tree(out)  # the whole new model beside the old one, swapped in once complete
    try:
        parity, sizes = _write_precisions(staging, protos, precisions, samples, references, log)
        save_references(staging / PARITY_FILE, references)
        manifest = _manifest(cfg, payload, ckpt, ckpt_sha, tree_hashes(staging), sizes, parity, precisions)
        manifest["export"] = {
            "opset": opset,
            "simplified": simplify,
            "graph_seconds": export_seconds,
            "total_seconds": time.perf_counter() - started,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        }
        manifest = write_manifest(staging, manifest)
        replace_tree(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a failed export leaves nothing half-written behind
    return manifest


def _check_precisions(precisions: tuple[str, ...], out: Path) -> None:
    """Only fp32 and fp16 are exported; INT8 is calibrated afterwards."""
    for p in precisions:
        if p not in EXPORT_PRECISIONS:
            raise AvemoError(
                f"{p} graphs are not made by export: INT8 needs calibration on MOSEI training features "
                f"(`avemo calibrate {out} --data CACHE`)"
            )


def _torch_references(model: Any, samples: Samples) -> References:
    """PyTorch's outputs for the parity samples: what every exported graph is checked against."""
    with torch.no_grad():
        return {
            m: [wrap(model, m)(*(torch.from_numpy(v) for v in inputs.values())).numpy() for inputs in samples[m]]
            for m in model.cfg.modalities
        }


def _export_graphs(
    model: Any, opset: int, simplify: bool, log: Any
) -> tuple[dict[str, onnx.ModelProto], dict[str, float]]:
    """One ONNX graph per modality of the model, and the seconds each took."""
    protos: dict[str, onnx.ModelProto] = {}
    export_seconds: dict[str, float] = {}
    for modality in model.cfg.modalities:
        t0 = time.perf_counter()
        protos[modality] = export_graph(model, modality, opset, simplify)
        export_seconds[modality] = time.perf_counter() - t0
        log(f"exported {graph_file(modality)} in {export_seconds[modality]:.1f} s")
    return protos, export_seconds


def _manifest(
    cfg: Any,
    payload: dict[str, Any],
    ckpt: Path,
    ckpt_sha: str,
    files: dict[str, str],
    sizes: dict[str, Any],
    parity: dict[str, Any],
    precisions: tuple[str, ...],
) -> dict[str, Any]:
    """The manifest's content (``write_manifest`` stamps its format and version)."""
    f = cfg.features
    return {
        "avemo_version": __version__,
        "model_config": to_dict(cfg),
        "regime": train_config_of(payload, str(ckpt)).regime,
        "labels": list(LABELS),
        "graphs": {
            m: {"file": graph_file(m), "inputs": input_specs(m, f.audio_dim, f.face_size), "outputs": output_specs()}
            for m in cfg.modalities
        },
        "profiles": profile_ranges(f.frames_per_second, f.fps),
        "preprocessing": {
            **to_dict(f),
            "audio": "80 log-Mel (kaldi-native-fbank, no dither) + delta + delta-delta; CMVN inside the graph",
            "faces": "RGB uint8 pixels, [3, S, S]; / 255 and ImageNet mean/std inside the graph",
        },
        "precisions": {
            p: {
                "dir": PRECISION_DIRS[p],
                "parity_tolerance": PARITY_TOLERANCE[p],
                **({"fp32_ops": list(FP32_OPS)} if p == "fp16" else {}),
            }
            for p in precisions
        },
        "files": files,
        "sizes": sizes,
        "parity": parity,
        "metrics": {"valid": payload.get("valid"), "best_epoch": payload.get("best_epoch")},
        "source": {"checkpoint": str(ckpt), "checkpoint_sha256": ckpt_sha},
    }


def _write_precisions(
    staging: Path,
    protos: dict[str, onnx.ModelProto],
    precisions: tuple[str, ...],
    samples: Samples,
    references: References,
    log: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write each precision's graphs + shared weights into ``staging`` and check their parity."""
    parity: dict[str, Any] = {}
    sizes: dict[str, Any] = {}
    for precision in precisions:
        d = staging / PRECISION_DIRS[precision]
        d.mkdir(parents=True, exist_ok=True)
        graphs = {m: to_fp16(copy.deepcopy(p)) if precision == "fp16" else copy.deepcopy(p) for m, p in protos.items()}
        sizes[precision] = share_weights(graphs, d / WEIGHTS_FILE)
        for modality, graph in graphs.items():
            onnx.save(graph, d / graph_file(modality))
            onnx.checker.check_model(str(d / graph_file(modality)))
        sizes[precision]["files"] = {f.name: f.stat().st_size for f in sorted(d.iterdir()) if f.is_file()}
        parity[precision] = check_parity(d, samples, references, precision)
        log(f"{precision}: {parity_summary(parity[precision])}")
    return parity, sizes
