"""`avemo export-triton`: config.pbtxt parsed into Triton's own ModelConfig; the ONNX models run from the repo."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from avemo.cli import main
from avemo.errors import AvemoError

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'tritonclient[grpc]'")
DTYPES = {"float32": model_config_pb2.TYPE_FP32, "int64": model_config_pb2.TYPE_INT64}


def _parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture
def models(colearn_export, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(colearn_export[0], copy)
    return copy


def test_onnxruntime_repository_configs_match_the_manifest_and_graphs_run(models, tmp_path):
    from avemo.runtime.manifest import load_manifest
    from avemo.runtime.ort_backend import OrtBackend
    from avemo.runtime.parity import sample_inputs
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
    folders = export_triton(models, tmp_path / "repo", backend="tensorrt", precision="fp16")
    for modality, folder in folders.items():
        assert (folder / "1" / "model.plan").read_bytes() == b"plan-" + modality.encode()
        assert not (folder / "1" / "avemo.weights").exists()
        config = _parse(folder / "config.pbtxt")
        assert config.backend == "tensorrt" and config.max_batch_size == 16
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    with pytest.raises(AvemoError, match="use --force"):
        export_triton(models, tmp_path / "repo")


def test_export_triton_cli(models, tmp_path):
    result = CliRunner().invoke(main, ["export-triton", str(models), "--out", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    assert "avemo_av: 1/avemo.weights, 1/model.onnx, config.pbtxt" in result.output
    again = CliRunner().invoke(main, ["export-triton", str(models), "--out", str(tmp_path / "repo")])
    assert again.exit_code == 1 and "use --force" in again.output
