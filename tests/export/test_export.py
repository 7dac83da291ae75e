"""Export of tiny models in every regime: graphs, shared weights, parity (that can fail), manifest, verify."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from avemo.cli import main
from avemo.contract import MANIFEST_FILE, PARITY_FILE, PARITY_TOLERANCE, WEIGHTS_FILE, graph_file
from avemo.errors import AvemoError
from avemo.export.exporter import export_run
from avemo.runtime.backends.ort import OrtBackend
from avemo.runtime.backends.parity import ParityError, check_parity, load_references, parity_samples, sample_inputs
from avemo.runtime.models.manifest import load_manifest
from tests.conftest import make_checkpoint as _checkpoint


def test_three_graphs_share_one_weight_file(colearn_export):
    out, manifest, model = colearn_export
    for m in ("a", "v", "av"):
        graph = onnx.load(str(out / graph_file(m)), load_external_data=False)
        locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {WEIGHTS_FILE}, m
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    table_bytes = model.audio.position.table.numel() * 4  # the position table, stored once for both encoders
    weights = (out / WEIGHTS_FILE).stat().st_size
    assert weights < 1.1 * (state_bytes + table_bytes)  # about one copy of the parameters ...
    sizes = manifest["sizes"]["fp32"]
    assert sizes["bytes_referenced"] > 2 * sizes["bytes_written"]  # ... though three graphs use them
    assert (out / "fp16" / WEIGHTS_FILE).stat().st_size < 0.6 * weights


def test_graphs_run_at_several_shapes_and_match_torch(colearn_export):
    out, manifest, model = colearn_export
    for m in ("a", "v", "av"):
        shapes = manifest["parity"]["fp32"][m]["shapes"]
        assert (1, shapes[0][1]) == tuple(shapes[0]) and len(shapes) >= 3  # batch 1 and a short clip included
        assert manifest["parity"]["fp32"][m]["max_abs_diff"] <= 1e-4
        assert manifest["parity"]["fp16"][m]["label_agreement"] >= 0.9
    # An extra shape not used by the export's own check: batch 5, 4.3 s. uint8 faces in the graph answer as the
    # model did on the float faces the host used to make (pixels / 255), within fp32's parity tolerance.
    inputs = sample_inputs(model.cfg.features, "av", 5, 4.3, seed=7)
    assert inputs["faces"].dtype == np.uint8
    got = OrtBackend(out / graph_file("av")).infer(inputs)
    old = {**inputs, "faces": inputs["faces"].astype(np.float32) / 255.0}
    with torch.no_grad():
        want = torch.sigmoid(model(*(torch.from_numpy(v) for v in old.values()))).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=PARITY_TOLERANCE["fp32"])


def test_manifest_describes_the_graphs(colearn_export):
    out, _, _ = colearn_export
    manifest = load_manifest(out)
    data = manifest.data
    assert data["labels"] == ["happy", "sad", "anger", "surprise", "disgust", "fear"]
    assert [i["name"] for i in data["graphs"]["av"]["inputs"]] == [
        "audio_feats",
        "audio_lengths",
        "faces",
        "face_lengths",
    ]
    assert data["graphs"]["a"]["inputs"][0]["shape"] == ["batch", "audio_frames", 240]
    lo, opt, hi = data["profiles"]["audio_frames"]
    assert lo < opt < hi and data["profiles"]["batch"] == [1, 4, 16]
    assert data["preprocessing"]["sample_rate"] == 16000
    assert set(data["files"]) >= {"avemo_a.onnx", WEIGHTS_FILE, "fp16/avemo_av.onnx", PARITY_FILE}
    assert data["metrics"]["valid"]["av"]["average"]["mF1"] == 0.5
    assert not (out / ".export-staging").exists()


def test_parity_check_fails_on_a_perturbed_graph(colearn_export, tmp_path):
    out, _, _ = colearn_export
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    weights = np.fromfile(bad / WEIGHTS_FILE, dtype=np.float32)
    weights[: len(weights) // 2] *= 1.05  # a slightly wrong model
    weights.tofile(bad / WEIGHTS_FILE)
    samples = parity_samples(load_manifest(bad, verify=False).features, ["a", "v", "av"])
    with pytest.raises(ParityError, match=r"max \|probs diff\| .* > 1e-04"):
        check_parity(bad, samples, load_references(bad / PARITY_FILE), "fp32")


def test_tampered_file_is_detected_by_verify_and_the_runtime(colearn_export, tmp_path):
    out, _, _ = colearn_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(copy)])
    assert result.exit_code == 0, result.output
    assert "| fp16 | fp16/avemo_av.onnx | onnx-reference |" in result.output
    with open(copy / "fp16" / graph_file("v"), "ab") as fh:
        fh.write(b"\0")
    result = runner.invoke(main, ["verify", str(copy)])
    assert result.exit_code == 1
    assert "fp16/avemo_v.onnx: sha256 does not match" in result.output
    with pytest.raises(AvemoError, match="sha256 does not match"):
        load_manifest(copy)


def test_out_dir_with_other_files_is_refused_unless_forced(colearn_export, micro_config, tmp_path):
    out, _, _ = colearn_export
    other, _ = _checkpoint(tmp_path / "audio.pt", micro_config, "audio", seed=3)
    with pytest.raises(AvemoError, match="another model's export"):
        export_run(other, out, log=lambda *_: None)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "model.onnx").write_bytes(b"x")
    with pytest.raises(AvemoError, match=r"without a manifest\.json"):
        export_run(other, stray, log=lambda *_: None)
    export_run(other, stray, force=True, log=lambda *_: None)
    manifest = load_manifest(stray)
    assert manifest.modalities == ["a"]  # a baseline exports only its own modality
    with pytest.raises(AvemoError, match=r"no V graph \(this model has a\)"):
        manifest.graph_path("v")


@pytest.mark.parametrize("regime", ["visual", "conventional"])
def test_other_regimes_export(regime, micro_config, tmp_path):
    ckpt, _ = _checkpoint(tmp_path / "m.pt", micro_config, regime)
    manifest = export_run(ckpt, tmp_path / "models", log=lambda *_: None)
    expected = ["v"] if regime == "visual" else ["a", "v", "av"]
    assert list(manifest["graphs"]) == expected
    assert all(manifest["parity"]["fp32"][m]["max_abs_diff"] <= 1e-4 for m in expected)


def test_int8_points_to_calibration_and_failures_leave_no_manifest(micro_config, tmp_path, monkeypatch):
    ckpt, _ = _checkpoint(tmp_path / "m.pt", micro_config, "audio")
    with pytest.raises(AvemoError, match="avemo calibrate"):
        export_run(ckpt, tmp_path / "int8", ("int8",), log=lambda *_: None)

    import avemo.export.exporter as exporter

    def broken(*args, **kwargs):
        raise ParityError("simulated parity failure")

    monkeypatch.setattr(exporter, "check_parity", broken)
    with pytest.raises(ParityError):
        export_run(ckpt, tmp_path / "failed", log=lambda *_: None)
    assert not (tmp_path / "failed" / MANIFEST_FILE).exists()
    assert not any((tmp_path / "failed").rglob("*.onnx"))


def test_export_cli_and_avemo_export_entry_point(micro_config, tmp_path):
    ckpt, _ = _checkpoint(tmp_path / "m.pt", micro_config, "audio")
    result = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path / "m"), "--opset", "16"])
    assert result.exit_code == 2 and "opset >= 17" in result.output
    result = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "avemo build" in result.output  # no TensorRT here: the command to run on the device
    assert json.loads((tmp_path / "m" / MANIFEST_FILE).read_text())["regime"] == "audio"


def test_avemo_export_console_script_gives_one_line_errors(tmp_path):
    import subprocess
    import sys

    (tmp_path / "junk.pt").write_bytes(b"junk")
    code = "import sys; from avemo.cli import export_main; sys.argv[0] = 'avemo-export'; export_main()"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "junk.pt"), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    assert "junk.pt: corrupt or unreadable checkpoint" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["*.onnx*", "*manifest.json*"])
def test_a_full_disk_is_one_line_and_leaves_no_model(micro_config, tmp_path, name):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import FAULTS

    ckpt, _ = _checkpoint(tmp_path / "m.pt", micro_config, "audio")
    env = {**os.environ, "PYTHONPATH": str(FAULTS), "AVEMO_FULL_DISK": name}
    command = [str(Path(sys.executable).parent / "avemo"), "export", str(ckpt), "--out", str(tmp_path / "m")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines()[-1].endswith(": cannot write (No space left on device)"), run.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no model, no staging folder
