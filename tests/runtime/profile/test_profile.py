"""`avemo profile`: statistics against numpy, well-formed JSON/CSV/Markdown/PNG, interleaving, RSS, FLOPs, pipeline."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from avemo.cli import main


def test_summary_statistics_match_numpy():
    from avemo.runtime.timing import summarize

    samples = np.random.default_rng(0).gamma(2.0, 3.0, 257)
    stats = summarize(samples)
    for p in (50, 90, 99):
        assert stats[f"p{p}"] == pytest.approx(np.percentile(samples, p))
    assert stats["max"] == samples.max() and stats["min"] == samples.min() and stats["n"] == 257
    known = summarize(np.arange(1, 101, dtype=float))
    assert (known["p50"], known["p90"], known["p99"], known["max"]) == pytest.approx((50.5, 90.1, 99.01, 100.0))
    with pytest.raises(ValueError, match="no latency samples"):
        summarize(np.array([]))


def test_candidates_are_interleaved_and_rotated_per_round():
    from avemo.runtime.timing import interleaved_latency

    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    raw = interleaved_latency(calls, iters=2, warmup=1, rounds=3)
    assert order[:3] == ["a", "b", "c"]  # warm-up, once each
    assert order[3:] == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]
    assert {k: len(v) for k, v in raw.items()} == {"a": 6, "b": 6, "c": 6}


@pytest.fixture(scope="module")
def profiled(colearn_export, tmp_path_factory):
    from avemo.export.profile_cli import torch_baseline
    from avemo.runtime.profile.cases import run_profile
    from avemo.runtime.profile.report import write_outputs

    models = colearn_export[0]
    result = run_profile(models, ["torch", "ort", "trt"], ["fp32", "fp16", "int8"], ["av"], [1, 2], [0.5, 1.0],
                         iters=6, rounds=2, warmup=1, threads=1, progress=False, baseline=torch_baseline)  # fmt: skip
    out = tmp_path_factory.mktemp("profile")
    return result, write_outputs(result, out)


def test_profile_cases_statistics_and_speedups(profiled):
    result, _ = profiled
    combos = {(c["backend"], c["precision"]) for c in result["cases"]}
    assert combos == {("torch", "fp32"), ("ort", "fp32"), ("ort", "fp16")}
    assert len(result["cases"]) == 3 * 2 * 2
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in result["skipped"]}
    assert "no int8 graphs" in skipped["ort", "int8"] and "tensorrt and pycuda" in skipped["trt", "fp32"]
    for case in result["cases"]:
        samples = np.array(case["samples_ms"])
        assert case["n"] == len(samples) == 6
        for p in (50, 90, 99):
            assert case[f"p{p}_ms"] == pytest.approx(np.percentile(samples, p), abs=1e-3)
        assert case["max_ms"] == pytest.approx(samples.max(), abs=1e-3)
        assert case["throughput_clips_per_s"] == pytest.approx(1000 * case["batch"] / samples.mean(), rel=1e-3)
        assert case["rtf"] == pytest.approx(case["p50_ms"] / 1000 / (case["batch"] * case["seconds"]))
        assert case["threads"] == 1 and case["clock"] == "perf_counter"
        torch_p50 = next(
            c["p50_ms"] for c in result["cases"]
            if c["backend"] == "torch" and (c["batch"], c["seconds"]) == (case["batch"], case["seconds"])
        )  # fmt: skip
        assert case["speedup_vs_torch"] == pytest.approx(torch_p50 / case["p50_ms"])


def test_profile_files_are_well_formed_and_name_the_machine(profiled):
    result, paths = profiled
    saved = json.loads(paths["json"].read_text())
    assert saved["format"] == "avemo-profile" and saved["cases"] == json.loads(json.dumps(result["cases"]))
    assert saved["machine"]["cores"] >= 1 and "onnxruntime" in saved["machine"]["versions"]
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == len(result["cases"])
    assert float(rows[0]["p50_ms"]) == pytest.approx(result["cases"][0]["p50_ms"])
    assert all(r["machine"] == result["machine"]["summary"] for r in rows)
    md = paths["md"].read_text()
    assert md.startswith(f"Machine: {result['machine']['summary']}")
    assert md.count("| A+V |") == len(result["cases"]) and "Skipped ort int8" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rss_probe_runs_the_runtime_without_torch(colearn_export):
    from avemo.export.profile_cli import torch_baseline
    from avemo.runtime.profile.memory import peak_rss

    models, manifest, _ = colearn_export
    ort = peak_rss(models, "ort", "fp32", "av", 1, 1.0, 1, None)
    baseline = peak_rss(models, "torch", "fp32", "av", 1, 1.0, 1, manifest["source"]["checkpoint"], torch_baseline)
    assert not ort["torch_loaded"] and baseline["torch_loaded"]
    assert ort["peak_rss_mb"] > 10 and baseline["peak_rss_mb"] > 10


def test_flop_count_matches_a_hand_count(tmp_path):
    from avemo.runtime.profile.flops import graph_flops

    rng = np.random.default_rng(0)
    w_conv = numpy_helper.from_array(rng.random((8, 3, 3, 3), dtype=np.float32), "w_conv")
    w_mm = numpy_helper.from_array(rng.random((16, 5), dtype=np.float32), "w_mm")
    w_gemm = numpy_helper.from_array(rng.random((7, 5), dtype=np.float32), "w_gemm")
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["c"], pads=[1, 1, 1, 1], name="conv"),  # [1, 8, 4, 4]
        helper.make_node("Flatten", ["c"], ["f"], axis=0),  # [1, 128]
        helper.make_node("Reshape", ["f", "shape"], ["r"]),  # [8, 16]
        helper.make_node("MatMul", ["r", "w_mm"], ["m"], name="mm"),  # [8, 5]
        helper.make_node("Gemm", ["m", "w_gemm"], ["y"], transB=1, name="gemm"),  # [8, 7]
    ]
    shape = numpy_helper.from_array(np.array([8, 16], np.int64), "shape")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w_conv, w_mm, w_gemm, shape],
    )  # fmt: skip
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    expected = 2 * (8 * 4 * 4 * 3 * 3 * 3) + 2 * (8 * 5 * 16) + 2 * (8 * 7 * 5)
    assert graph_flops(path, {"x": rng.random((1, 3, 4, 4), dtype=np.float32)}) == expected


def test_pipeline_stages_add_up_on_a_real_file(colearn_export, tmp_path):
    from avemo.runtime.media.sample import write_media
    from avemo.runtime.profile.pipeline import profile_pipeline

    clip = write_media(tmp_path / "clip.mp4", seconds=2.0)
    result = profile_pipeline(colearn_export[0], clip, repeats=2)
    assert list(result["stages_ms"]) == [
        "decode audio", "audio features", "decode video (3 fps)", "face detection + crop", "inference"
    ]  # fmt: skip
    assert result["graph"] == "av" and result["duration_s"] == pytest.approx(2.0, abs=0.1)
    totals = [sum(v[i] for v in result["samples_ms"].values()) for i in range(2)]
    assert result["total_ms"] == pytest.approx(np.median(totals), rel=1e-3)
    assert result["rtf"] == pytest.approx(result["total_ms"] / 1000 / result["duration_s"])


def test_profile_cli_help_and_bad_values(colearn_export, tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(main, ["profile", "--help"]).output
    assert "Examples:" in help_text and "avemo profile models/" in help_text
    bad = runner.invoke(main, ["profile", str(colearn_export[0]), "--batch", "one"])
    assert bad.exit_code == 2 and "comma-separated int" in bad.output
    bad = runner.invoke(main, ["profile", str(colearn_export[0]), "--backend", "tpu"])
    assert bad.exit_code == 2 and "choose from torch, ort, trt" in bad.output
    ok = runner.invoke(main, ["profile", str(colearn_export[0]), "--backend", "ort", "--batch", "1", "--seconds", "1",
                              "--iters", "4", "--rounds", "2", "--no-rss", "--out", str(tmp_path / "p")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    flops = json.loads((tmp_path / "p" / "profile.json").read_text())["flops"]
    assert flops["flops"] > 0 and flops["gemm_flops_per_s"] > 0
    assert flops["ratio"] == pytest.approx(flops["best_ms"] / (1000 * flops["flops"] / flops["gemm_flops_per_s"]))
    ops = flops["ort_fp32_ms_by_op"]
    assert {"Conv", "Gemm"} <= set(ops) and list(ops.values()) == sorted(ops.values(), reverse=True)
    assert "Where ONNX Runtime fp32 spends its time" in (tmp_path / "p" / "profile.md").read_text()


def test_profile_script_runs_with_only_the_runtime(colearn_export, tmp_path):
    """scripts/profile_latency.py where torch, onnx and matplotlib cannot be imported (a runtime-only device)."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "scripts" / "profile_latency.py"
    code = textwrap.dedent(
        f"""
        import runpy, sys
        for name in ("torch", "onnx", "matplotlib"):
            sys.modules[name] = None  # as if not installed: imports fail, find_spec says None
        sys.argv = ["profile_latency.py", {str(colearn_export[0])!r}, "--backend", "torch,ort", "--batch", "1",
                    "--seconds", "1", "--iters", "4", "--rounds", "2", "--out", {str(tmp_path / "p")!r}]
        try:
            runpy.run_path({str(script)!r}, run_name="__main__")
        finally:
            assert sys.modules["torch"] is None
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert {(c["backend"], c["precision"]) for c in result["cases"]} == {("ort", "fp32")}
    assert "torch is not installed" in result["skipped"][0]["reason"]
    assert any("FLOP count skipped" in n for n in result["notes"]) and not result["rss"][0]["torch_loaded"]
    assert not (tmp_path / "p" / "profile.png").exists() and "No plot" in (tmp_path / "p" / "profile.md").read_text()


def test_duration_bounds_each_candidate_and_iters_caps_it(monkeypatch):
    """On a fake clock each call advances: a 3-s call gets one timed call, a 10-ms one its share of 1 s."""
    from avemo.runtime import timing

    now = [0]
    monkeypatch.setattr(timing.time, "perf_counter_ns", lambda: now[0])

    def takes(seconds: float):
        return lambda: now.__setitem__(0, now[0] + int(seconds * 1e9))

    calls = {"slow": takes(3.0), "fast": takes(0.01)}
    raw = timing.interleaved_latency(calls, iters=1000, warmup=5, rounds=4, duration=1.0)
    assert len(raw["slow"]) == 1 and len(raw["fast"]) == 100  # 4 turns of 0.25 s
    assert now[0] / 1e9 == pytest.approx(3.0 + 3.0 + 5 * 0.01 + 1.0)  # warm-up, one slow call, the fast calls
    capped = timing.interleaved_latency(calls, iters=10, warmup=1, rounds=4, duration=1.0)
    assert len(capped["fast"]) == 40
    counted = timing.interleaved_latency(calls, iters=3, warmup=1, rounds=2)  # no duration: exactly iters
    assert len(counted["slow"]) == len(counted["fast"]) == 6


def test_profile_writes_each_shape_says_what_it_skips_and_keeps_it_on_ctrl_c(colearn_export, tmp_path, monkeypatch):
    from avemo.runtime.profile import cases

    out, real, seen = tmp_path / "p", cases.interleaved_latency, []

    def interrupted_at_the_second_shape(*args, **kwargs):
        if seen:
            seen.append(json.loads((out / "profile.json").read_text()))  # already written after the first shape
            raise KeyboardInterrupt
        seen.append(None)
        return real(*args, **kwargs)

    monkeypatch.setattr(cases, "interleaved_latency", interrupted_at_the_second_shape)
    args = ["profile", str(colearn_export[0]), "--backend", "ort,trt", "--batch", "1,2", "--seconds", "1",
            "--duration", "0.2", "--out", str(out)]  # fmt: skip
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 130, done.output
    assert "not profiled: trt fp32: tensorrt and pycuda" in done.stderr.splitlines()[0]  # said before any timing
    assert [c["batch"] for c in seen[1]["cases"]] == [1]
    kept = json.loads((out / "profile.json").read_text())
    assert kept["interrupted"] and [c["batch"] for c in kept["cases"]] == [1] and kept["settings"]["duration_s"] == 0.2
    assert "interrupted: the 1 cases measured are in" in done.stderr and "| A+V | 1 | 1 | ort |" in done.stdout


def test_ctrl_c_during_the_probes_keeps_the_timings_and_says_what_is_missing(colearn_export, tmp_path, monkeypatch):
    """After the timing, Ctrl-C in the memory/FLOP/pipeline probes: exit 130 and the cases kept, not click's
    'Aborted!' with exit 1 (found by a user's run)."""
    from avemo.runtime.profile import extras

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(extras, "add_extras", interrupted)
    out = tmp_path / "p"
    args = ["profile", str(colearn_export[0]), "--backend", "ort", "--batch", "1", "--seconds", "1",
            "--duration", "0.1", "--out", str(out)]  # fmt: skip
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 130, done.output
    kept = json.loads((out / "profile.json").read_text())
    assert kept["interrupted"] and len(kept["cases"]) == 1
    assert any("interrupted during the memory/FLOP/pipeline probes" in n for n in kept["notes"])


def test_plot_takes_a_one_sample_case_whose_stored_sample_rounds_above_its_p50(tmp_path):
    """A 0.2-s run gives PyTorch one timed call; samples are stored rounded to 4 decimals, so its p10 could
    exceed its exact p50 and matplotlib refused the negative error bar (found by a review run)."""
    from avemo.runtime.profile.report import plot_latency

    case = {"graph": "av", "batch": 1, "seconds": 1.0, "backend": "torch", "precision": "fp32",
            "p50_ms": 695.315357, "p90_ms": 695.315357, "samples_ms": [695.3154]}  # fmt: skip
    plot_latency({"cases": [case], "machine": {"summary": "test"}}, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
