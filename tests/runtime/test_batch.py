"""`avemo infer` over many files: folders, globs, @lists; --out resumes; --workers; result fields; providers;
--plot checked first; a note on int8 graphs that missed their accuracy target."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.contract import LABELS, MANIFEST_FILE
from avemo.errors import AvemoError
from avemo.runtime import recognizer as recognizer_module
from avemo.runtime.batch import ResultsFile, expand_media
from avemo.runtime.media.sample import write_media
from avemo.runtime.stream.live import is_live


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    write_media(d / "one.mp4", seconds=1.5)
    (d / "sub").mkdir()
    write_media(d / "sub" / "two.MKV", seconds=1.0, face=False)
    (d / "broken.mp4").write_bytes(b"\x00 not media" * 40)
    (d / "notes.txt").write_text("not media")
    return d


def test_folders_globs_and_lists_expand_to_files(clips, tmp_path):
    folder = expand_media([str(clips)], is_live)
    assert [s for s, _ in folder] == [str(clips / "broken.mp4"), str(clips / "one.mp4"), str(clips / "sub/two.MKV")]
    assert expand_media([str(clips / "*.mp4")], is_live) == [
        (str(clips / "broken.mp4"), None),
        (str(clips / "one.mp4"), None),
    ]
    listed = tmp_path / "list.txt"
    listed.write_text(f"# a comment\n{clips / 'one.mp4'}\n\nudp://0.0.0.0:5000\n")
    assert expand_media([f"@{listed}"], is_live) == [(str(clips / "one.mp4"), None), ("udp://0.0.0.0:5000", None)]
    (tmp_path / "empty").mkdir()
    errors = dict(expand_media([str(tmp_path / "empty"), str(tmp_path / "*.mp4"), "@nothere.txt"], is_live))
    assert "no media files in folder" in errors[str(tmp_path / "empty")]
    assert errors[str(tmp_path / "*.mp4")] == "no file matches this pattern" and "not found" in errors["@nothere.txt"]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_folder_into_a_results_file_resumes_and_retries_errors(colearn_export, clips, tmp_path, monkeypatch):
    calls: list[str] = []
    real = recognizer_module.Recognizer.recognize
    monkeypatch.setattr(
        recognizer_module.Recognizer, "recognize", lambda self, m, *a: calls.append(str(m)) or real(self, m, *a)
    )
    out, runner = tmp_path / "results.jsonl", CliRunner()
    args = ["infer", str(clips), "--models", str(colearn_export[0]), "--out", str(out), "--threads", "1"]
    done = runner.invoke(main, [*args, "--workers", "2"])
    assert done.exit_code == 1 and done.stdout == ""  # the lines went to the file
    lines = {line["source"]: line for line in _lines(out)}
    assert set(lines) == {str(clips / n) for n in ("broken.mp4", "one.mp4", "sub/two.MKV")}
    assert "cannot open media" in lines[str(clips / "broken.mp4")]["error"]
    good = lines[str(clips / "one.mp4")]
    assert good["modality"] == "av" and all(round(p, 4) == p for p in good["probs"].values())
    top = max(good["probs"], key=good["probs"].get)
    assert good["dominant"] == {"emotion": top, "probability": good["probs"][top]}
    assert good["seconds"] == pytest.approx(1.5, abs=0.05) and good["rtf"] > 0
    assert lines[str(clips / "sub/two.MKV")]["modality"] == "a"
    calls.clear()
    again = runner.invoke(main, args)  # every file has a line: nothing is done again
    assert again.exit_code == 0 and calls == [] and "3 of 3 files already done" in again.stderr
    with out.open("a") as f:
        f.write('{"source": "' + str(clips / "one.mp4"))  # a crash cut this line: ignored
    again = runner.invoke(main, [*args, "--retry-errors"])
    assert calls == [str(clips / "broken.mp4")]  # only the error is redone (one.mp4 already has a whole line)
    assert len(_lines_tolerant(out)) == 4 and again.exit_code == 1


def _lines_tolerant(path):
    out = []
    for text in path.read_text().splitlines():
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError:
            pass
    return out


def test_csv_results_have_a_header_and_one_row_per_file(colearn_export, clips, tmp_path):
    out = tmp_path / "results.csv"
    args = ["infer", str(clips / "one.mp4"), str(clips / "broken.mp4"), "--models", str(colearn_export[0])]
    CliRunner().invoke(main, [*args, "--out", str(out)])
    import csv

    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == [str(clips / "one.mp4"), str(clips / "broken.mp4")]
    assert rows[0]["dominant"] in rows[0] and float(rows[0]["dominant_probability"]) == float(
        rows[0][rows[0]["dominant"]]
    )
    assert rows[1]["error"] and not rows[1]["modality"]
    with pytest.raises(AvemoError, match=r"jsonl or \.csv"):
        ResultsFile(tmp_path / "results.txt")


def test_plot_checks_matplotlib_before_any_work(colearn_export, clips, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as in the runtime-only install

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before --plot's dependency was checked")

    monkeypatch.setattr(recognizer_module, "Recognizer", no_work)
    args = ["infer", str(clips / "one.mp4"), "--models", str(colearn_export[0]), "--window", "1", "--plot", "x.png"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 1 and "matplotlib is not installed" in done.output and "pip install" in done.output


def test_ort_provider_reaches_every_session_and_a_missing_one_is_refused(colearn_export, clips, monkeypatch):
    import onnxruntime as ort

    args = ["infer", str(clips / "one.mp4"), "--models", str(colearn_export[0])]
    done = CliRunner().invoke(main, [*args, "--ort-provider", "cuda"])  # this onnxruntime is the CPU build
    assert done.exit_code == 1 and "no CUDAExecutionProvider" in done.output and "onnxruntime-gpu" in done.output
    # onnxruntime-gpu stand-in: it lists CUDA; sessions record what they are given, and (like ONNX Runtime)
    # refuse a name it does not know; the graphs then run on the CPU provider this build has.
    real = ort.InferenceSession
    seen: list[list[str]] = []

    def session(path, options=None, providers=None, **kwargs):
        assert providers and set(providers) <= set(ort.get_all_providers()), providers
        seen.append(list(providers))
        return real(path, options, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    done = CliRunner().invoke(main, [*args, "--ort-provider", "cuda"])
    assert done.exit_code == 0, done.output
    assert len(seen) >= 4 and all(
        p == ["CUDAExecutionProvider", "CPUExecutionProvider"] for p in seen
    )  # 3 graphs + YuNet
    refused = CliRunner().invoke(main, [*args, "--ort-provider", "cuda", "--backend", "trt"])
    assert refused.exit_code == 2 and "--ort-provider" in refused.output


def test_int8_that_missed_its_target_is_said_in_every_result_and_warned_by_doctor(colearn_export, clips, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(colearn_export[0], models)
    # Stand-in for a calibration that missed its target: the fp32 graphs filed as int8 (what is tested is
    # the manifest's flag reaching the results and doctor, not the graphs).
    shutil.copytree(models, tmp_path / "int8", ignore=shutil.ignore_patterns("fp16", "*.json", "*.npz"))
    shutil.move(tmp_path / "int8", models / "int8")
    manifest = json.loads((models / MANIFEST_FILE).read_text())
    entry = {"dir": "int8", "parity_tolerance": 0.5, "report": "int8/accuracy.md", "meets_accuracy_target": False}
    manifest["precisions"]["int8"] = entry
    (models / MANIFEST_FILE).write_text(json.dumps(manifest))
    args = ["infer", str(clips / "one.mp4"), str(clips / "sub/two.MKV"), "--models", str(models)]
    lines = [json.loads(x) for x in CliRunner().invoke(main, [*args, "--precision", "int8"]).stdout.splitlines()]
    assert len(lines) == 2 and all(any("missed their accuracy target" in n for n in x["notes"]) for x in lines)
    fp32 = [json.loads(x) for x in CliRunner().invoke(main, args).stdout.splitlines()]
    assert not any("accuracy target" in n for x in fp32 for n in x["notes"])
    doctor = CliRunner().invoke(main, ["doctor", str(models), "--out", str(tmp_path / "doctor")])
    assert doctor.exit_code == 0, doctor.output  # a warning, not a failure
    assert "[WARN] accuracy target, int8: int8 graphs missed their accuracy target" in doctor.output
    assert np.isfinite(lines[0]["probs"]["happy"])


def test_workers_overlap_files_and_the_bar_shows_files_per_second(capsys):
    """Two files that each wait for the other (a barrier) finish only if two workers run them at once."""
    import threading

    from avemo.runtime.batch import recognize_files
    from avemo.runtime.recognizer import Recognition

    barrier = threading.Barrier(2, timeout=10)

    class Together:
        def recognize(self, path):
            barrier.wait()
            probs = dict(zip(LABELS, (0.9, 0.1, 0.2, 0.3, 0.4, 0.123456), strict=True))
            return Recognition(
                "a", probs, "ort", ["happy"], source=str(path), seconds=2.0, timings_ms={"features": 10.0}
            )

    lines: list[dict] = []
    failed = recognize_files(Together(), [("a.wav", None), ("b.wav", None)], lines.append, workers=2, progress=True)
    assert failed == 0 and sorted(x["source"] for x in lines) == ["a.wav", "b.wav"]
    assert lines[0]["probs"]["fear"] == 0.1235 and lines[0]["dominant"] == {"emotion": "happy", "probability": 0.9}
    assert lines[0]["rtf"] == 0.005  # 10 ms of work for 2 s of media
    err = capsys.readouterr().err
    assert "2/2" in err and "file/s" in err
