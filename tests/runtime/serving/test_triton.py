"""`avemo export-triton`: config.pbtxt parsed into Triton's own ModelConfig; the ONNX models run from the repo."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from avemo.cli import main
from avemo.contract import PROFILE_BUCKETS
from avemo.errors import AvemoError

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'tritonclient[grpc]'")
DTYPES = {
    "float32": model_config_pb2.TYPE_FP32,
    "int64": model_config_pb2.TYPE_INT64,
    "uint8": model_config_pb2.TYPE_UINT8,
}


def _parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture
def models(colearn_export, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(colearn_export[0], copy)
    return copy


def test_onnxruntime_repository_configs_match_the_manifest_and_graphs_run(models, tmp_path):
    from avemo.runtime.backends.ort import OrtBackend
    from avemo.runtime.backends.parity import sample_inputs
    from avemo.runtime.models.manifest import load_manifest
    from avemo.runtime.serving.repository import export_triton

    manifest = load_manifest(models)
    repo = tmp_path / "repo"
    folders = export_triton(models, repo, precision="fp16", max_batch=8, instances=2)
    assert sorted(p.name for p in repo.iterdir()) == ["avemo_a", "avemo_av", "avemo_v"]
    for modality, folder in folders.items():
        config = _parse(folder / "config.pbtxt")
        graph = manifest.data["graphs"][modality]
        assert config.name == folder.name and config.backend == "onnxruntime" and config.max_batch_size == 8
        assert [i.name for i in config.input] == [s["name"] for s in graph["inputs"]]
        for tensor, spec in zip(config.input, graph["inputs"], strict=True):
            assert tensor.data_type == DTYPES[spec["dtype"]]
            if tensor.name == "faces":  # clients send bytes; the graph casts and scales them
                assert tensor.data_type == model_config_pb2.TYPE_UINT8
            expected = [-1 if isinstance(d, str) else d for d in spec["shape"][1:]] or [1]
            assert list(tensor.dims) == expected
            assert tensor.HasField("reshape") == (len(spec["shape"]) == 1)  # lengths: [1] -> scalar per request
        assert [(o.name, list(o.dims)) for o in config.output] == [("probs", [6])]
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
        # The graph runs from its new place (its shared weights beside it) and gives the original's answer.
        inputs = sample_inputs(manifest.features, modality, 2, 1.0, seed=4)
        moved = OrtBackend(folder / "1" / "model.onnx").infer(inputs)
        np.testing.assert_array_equal(moved, OrtBackend(manifest.graph_path(modality, "fp16")).infer(inputs))


def test_tensorrt_repository_takes_the_engines_of_one_gpu(models, tmp_path):
    from avemo.runtime.serving.repository import export_triton

    with pytest.raises(AvemoError, match="pass --engines"):
        export_triton(models, tmp_path / "repo", backend="tensorrt", precision="fp16")
    engines = models / "engines" / "nvidia-h100-sm90-trt10.13.0"
    engines.mkdir(parents=True)
    for m in ("a", "v"):
        (engines / f"avemo_{m}_fp16.engine").write_bytes(b"plan-" + m.encode())
    with pytest.raises(AvemoError, match=r"avemo_av_fp16\.engine: no fp16 engine"):
        export_triton(models, tmp_path / "repo", backend="tensorrt", precision="fp16")
    (engines / "avemo_av_fp16.engine").write_bytes(b"plan-av")
    with pytest.raises(AvemoError, match="exceeds the engines' profile"):
        export_triton(models, tmp_path / "repo", backend="tensorrt", precision="fp16", max_batch=64)
    (engines / "avemo_v_fp16.json").write_text(json.dumps({"max_batch": 16, "profile": {}}))  # built before buckets
    folders = export_triton(models, tmp_path / "repo", backend="tensorrt", precision="fp16")
    for modality, folder in folders.items():
        assert (folder / "1" / "model.plan").read_bytes() == b"plan-" + modality.encode()
        assert not (folder / "1" / "avemo.weights").exists()
        config = _parse(folder / "config.pbtxt")
        assert config.backend == "tensorrt" and config.max_batch_size == 16
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        # every length bucket's profile offered to the instances (unlisted, Triton would use only the first)
        want = ["0"] if modality == "v" else [str(k) for k in range(len(PROFILE_BUCKETS))]
        assert list(config.instance_group[0].profile) == want
    with pytest.raises(AvemoError, match="use --force"):
        export_triton(models, tmp_path / "repo")


def test_export_triton_cli(models, tmp_path):
    result = CliRunner().invoke(main, ["export-triton", str(models), "--out", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    assert "avemo_av: 1/avemo.weights, 1/model.onnx, config.pbtxt" in result.output
    again = CliRunner().invoke(main, ["export-triton", str(models), "--out", str(tmp_path / "repo")])
    assert again.exit_code == 1 and "use --force" in again.output


def _tree(folder) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (symlinks listed as such)."""
    import hashlib

    return {
        str(p.relative_to(folder)): "symlink" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_python_repository_holds_copies_of_the_listed_files_only(models, tmp_path):
    """Hard links made ONNX refuse the model folder; unlisted files and symlinks leaked into the repository."""
    import json

    import onnx

    from avemo.runtime.serving.repository import export_triton

    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (models / "notes.txt").symlink_to(secret)
    (models / "stray.bin").write_bytes(b"not listed")
    folders = export_triton(models, tmp_path / "repo", backend="python")
    listed = {"manifest.json", *json.loads((models / "manifest.json").read_text())["files"]}
    for folder in folders.values():
        placed = _tree(folder / "1" / "models")
        assert set(placed) == listed
        assert all(placed[name] == digest for name, digest in _tree(models).items() if name in listed)
        assert all((folder / "1" / "models" / name).stat().st_nlink == 1 for name in placed)
    onnx.load(str(models / "avemo_av.onnx"))  # external data with one link: ONNX still loads the model folder


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_manifest_path_leaving_the_model_folder_is_refused(models, tmp_path, how):
    import hashlib
    import json

    from avemo.runtime.serving.repository import export_triton

    outside = tmp_path / "outside.bin"
    outside.write_bytes((models / "parity.npz").read_bytes())
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    manifest = json.loads((models / "manifest.json").read_text())
    if how == "symlink":  # same content, so the hashes still match
        (models / "parity.npz").unlink()
        (models / "parity.npz").symlink_to(outside)
        name = "parity.npz"
    else:
        name = "../outside.bin" if how == "dotdot" else str(outside)
        manifest["files"][name] = digest
        (models / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AvemoError, match="symlink" if how == "symlink" else "leaves the model folder"):
        export_triton(models, tmp_path / "repo", backend="python")
    assert not (tmp_path / "repo").exists() and not list(tmp_path.glob(".repo*"))


KILL_AFTER_RENAMES = """
import os, signal, sys
from pathlib import Path
import avemo.io
from avemo.runtime.serving.repository import export_triton

limit, count = int(sys.argv[3]), 0

def counted(rename):
    def wrapper(*args, **kwargs):
        global count
        rename(*args, **kwargs)
        count += 1
        if count == limit:
            os.kill(os.getpid(), signal.SIGKILL)
    return wrapper

os.rename, os.replace, avemo.io.exchange = counted(os.rename), counted(os.replace), counted(avemo.io.exchange)
export_triton(Path(sys.argv[1]), Path(sys.argv[2]), precision="fp16", force=True)
"""


def test_force_replacement_killed_after_any_rename_leaves_each_model_old_or_new(models, tmp_path):
    """Old: a python repository (4 models); new: onnxruntime fp16 (3 models: avemo_media goes)."""
    import subprocess
    import sys

    from avemo.runtime.serving.repository import export_triton

    export_triton(models, tmp_path / "old", backend="python")
    export_triton(models, tmp_path / "new", precision="fp16")
    old = {p.name: _tree(p) for p in (tmp_path / "old").iterdir()}
    new = {p.name: _tree(p) for p in (tmp_path / "new").iterdir()}
    for n in range(1, 100):
        repo = tmp_path / f"repo{n}"
        shutil.copytree(tmp_path / "old", repo)
        run = subprocess.run([sys.executable, "-c", KILL_AFTER_RENAMES, str(models), str(repo), str(n)], check=False)
        now = {p.name: _tree(p) for p in repo.iterdir()}
        if run.returncode == 0:  # fewer than n renames: the run completed
            assert now == new and not list(tmp_path.glob(f".{repo.name}.*")), n
            break
        assert run.returncode == -9
        for name in ("avemo_a", "avemo_v", "avemo_av"):
            assert now[name] in (old[name], new[name]), (n, name)
        assert now.get("avemo_media", old["avemo_media"]) == old["avemo_media"], n
        shutil.rmtree(repo)
    assert n > 4  # the writes in staging and the 4 swaps were each interrupted
    # a killed run's staging folder is removed by the next run, which completes the replacement
    assert list(tmp_path.glob(f".{repo.name}.avemo-staging-*")) == []
    shutil.copytree(tmp_path / "old", tmp_path / "again")
    subprocess.run([sys.executable, "-c", KILL_AFTER_RENAMES, str(models), str(tmp_path / "again"), "5"], check=False)
    assert list(tmp_path.glob(".again.avemo-staging-*"))
    export_triton(models, tmp_path / "again", precision="fp16", force=True)
    assert {p.name: _tree(p) for p in (tmp_path / "again").iterdir()} == new
    assert list(tmp_path.glob(".again.*")) == []
