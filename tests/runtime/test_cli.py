"""`avemo infer`'s command line: JSON lines, error lines that let the batch go on, a timeline, checked options."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.runtime.media.sample import write_media
from tests.conftest import FAULTS


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "both": write_media(d / "both.mp4", seconds=3.0),
        "silent": write_media(d / "silent.mp4", seconds=2.0, audio_rate=None),
        "long": write_media(d / "long.mp4", seconds=7.0),
    }


def test_infer_cli_json_lines_errors_and_timeline(colearn_export, media, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00 not media" * 40)
    runner = CliRunner()
    args = [str(media["both"]), str(tmp_path / "broken.mp4"), str(media["silent"]), "--models", str(colearn_export[0])]
    result = runner.invoke(main, ["infer", *args])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 1  # one input failed ...
    assert [line.get("modality") for line in lines] == ["av", None, "v"]  # ... the others still ran
    assert "cannot open media" in lines[1]["error"]
    # 3 s at 3 fps: 9 frames, the face in each; the chosen face is reported.
    assert (lines[0]["frames_sampled"], lines[0]["frames_with_face"]) == (9, 9)
    assert lines[0]["face"]["choice"] == "only face" and len(lines[0]["face"]["box"]) == 4
    plot = tmp_path / "timeline.png"
    result = runner.invoke(
        main,
        [
            "infer",
            str(media["long"]),
            "--models",
            str(colearn_export[0]),
            "--window",
            "3",
            "--hop",
            "2",
            "--plot",
            str(plot),
            "--precision",
            "fp16",
        ],
    )
    assert result.exit_code == 0, result.output
    windows = [json.loads(line) for line in result.stdout.splitlines()]
    summary = json.loads(result.stderr.splitlines()[-1])["summary"]  # on stderr
    assert summary["windows"] == 3 and summary["stream_seconds"] == 7.0
    assert [(w["start"], w["end"]) for w in windows] == [(0.0, 3.0), (2.0, 5.0), (4.0, 7.0)]
    assert [w["frames_sampled"] for w in windows] == [9, 9, 9]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(main, ["infer", str(media["long"]), "--models", str(colearn_export[0]), "--plot", "x.png"])
    assert result.exit_code == 2 and "--window" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--timeout", "-1"],
        ["--timeout", "0"],
        ["--timeout", "inf"],
        ["--reconnect", "-1"],
        ["--window", "inf"],
        ["--window", "nan"],
        ["--hop", "-1"],
        ["--window", "2", "--hop", "1e-7"],  # a window per 100 ns: 20 M windows on a 2-s clip, no end in sight
        ["--threads", "0"],
        ["--threads", "100000"],
        ["--max-seconds", "nan"],
    ],
)
def test_infer_options_are_validated(colearn_export, args):
    base = ["infer", "udp://127.0.0.1:9", "--models", str(colearn_export[0]), "--window", "2"]  # the last wins
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code == 2 and f"Invalid value for '{args[-2]}'" in result.output, result.output
    assert "Traceback" not in result.output


def _float_wav(path: Path, samples) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_f32le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_a_float_wav_with_nan_is_an_error_line_and_the_batch_goes_on(colearn_export, tmp_path):
    import numpy as np

    tone = (0.3 * np.sin(np.arange(32000) / 10)).astype(np.float32)
    good = _float_wav(tmp_path / "good.wav", tone)
    bad_tone = tone.copy()
    bad_tone[16000:16010] = np.nan
    bad_tone[20000] = np.inf
    bad = _float_wav(tmp_path / "bad.wav", bad_tone)
    result = CliRunner().invoke(main, ["infer", str(good), str(bad), str(good), "--models", str(colearn_export[0])])
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [line.get("modality") for line in lines] == ["a", None, "a"]
    assert lines[1]["source"] == str(bad) and "non-finite samples (NaN or Inf)" in lines[1]["error"]


def test_bad_media_names_are_error_lines_and_json_stays_valid_unicode(colearn_export, tmp_path):
    """A folder without media (a folder is an input: its media files), a name over 255 bytes and a name that is
    not UTF-8, in one batch."""
    import numpy as np

    good = _float_wav(tmp_path / "good.wav", (0.3 * np.sin(np.arange(16000) / 10)).astype(np.float32))
    latin1 = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.wav")  # a Latin-1 name on a UTF-8 system
    shutil.copy(good, latin1)
    (tmp_path / "empty").mkdir()
    media = [str(tmp_path / "empty"), str(tmp_path / ("x" * 300 + ".wav")), latin1]
    result = CliRunner().invoke(main, ["infer", *media, "--models", str(colearn_export[0])])
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert result.exit_code == 1 and "Traceback" not in result.output and len(lines) == 3, result.output
    assert lines[0]["error"].startswith("no media files in folder")
    assert lines[1]["error"].endswith("File name too long")
    assert lines[2]["modality"] == "a" and lines[2]["source"].endswith("caf\\xe9.wav")
    for line in lines:
        json.dumps(line, ensure_ascii=False).encode("utf-8")  # a lone surrogate would not encode


def test_a_full_disk_under_the_plot_is_one_line_and_leaves_no_empty_picture(colearn_export, media, tmp_path):
    plot = tmp_path / "timeline.png"
    env = {**os.environ, "PYTHONPATH": str(FAULTS), "AVEMO_FULL_DISK": "*timeline.png*"}
    command = [str(Path(sys.executable).parent / "avemo"), "infer", str(media["both"]), "--models"]
    command += [str(colearn_export[0]), "--window", "2", "--plot", str(plot)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[-1] == f"Error: {plot}: cannot write (No space left on device)", run.stderr
    assert "Traceback" not in run.stderr and json.loads(run.stdout.splitlines()[0])["modality"] == "av"  # it stands
    assert os.listdir(tmp_path) == []
    run = subprocess.run([*command[:-1], str(tmp_path / "timeline.xyz")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Format 'xyz' is not supported" in run.stderr.splitlines()[-1], run.stderr
    assert "Traceback" not in run.stderr and os.listdir(tmp_path) == []
