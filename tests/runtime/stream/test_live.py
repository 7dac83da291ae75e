"""Live sources (`avemo infer URL|lavfi:...|--camera --window`): network streams, FFmpeg inputs and cameras,
read as they arrive; stalls, breaks, reconnection, Ctrl-C and falling behind."""

import json
import re

import pytest
from click.testing import CliRunner

from avemo.cli import main
from avemo.runtime.media.sample import write_media
from avemo.runtime.recognizer import Recognizer


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receive(models, url, *args):
    """`avemo infer URL` in its own process, as a user runs it; returns once it is reading the source."""
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-c", "from avemo.cli import main; main()", "infer", url, "--models", str(models), *args]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr.readline().startswith("backend: ")  # the model is loaded ...
    assert "reading" in process.stderr.readline()  # ... and the source opens next
    time.sleep(0.5)
    return process


def send(path, url, seconds=None):
    import subprocess
    import sys

    extra = [] if seconds is None else [str(seconds)]
    return subprocess.Popen([sys.executable, "-m", "avemo.runtime.media.sample", "send", str(path), url, *extra])


@pytest.fixture(scope="module")
def ts_media(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("live") / "live.ts", seconds=7.0, size=(640, 360))


def test_live_udp_stream_one_line_per_hop(colearn_export, ts_media):

    port = free_port()
    receiver = receive(colearn_export[0], f"udp://127.0.0.1:{port}", "--window", "2", "--hop", "1",
                       "--max-seconds", "5", "--timeout", "8")  # fmt: skip
    sender = send(ts_media, f"udp://127.0.0.1:{port}?pkt_size=1316")
    out, err = receiver.communicate(timeout=60)
    sender.wait(timeout=30)
    lines = [json.loads(line) for line in out.splitlines()]
    assert receiver.returncode == 0, err
    assert [(line["start"], line["end"]) for line in lines] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0)]
    for line in lines:
        assert line["modality"] == "av" and line["frames_sampled"] == 6 and line["frames_with_face"] == 6
        assert 0 <= line["latency_ms"] < 2000 and line["dropped_windows"] == 0
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    assert summary["windows"] == 4 and summary["latency_ms"]["p90"] >= summary["latency_ms"]["p50"]


def test_a_stream_that_stops_ends_with_an_error_after_the_timeout(colearn_export, ts_media):
    import time

    port = free_port()
    receiver = receive(colearn_export[0], f"udp://127.0.0.1:{port}", "--window", "2", "--hop", "1", "--timeout", "3")
    send(ts_media, f"udp://127.0.0.1:{port}?pkt_size=1316", seconds=4).wait(timeout=30)
    started = time.monotonic()
    out, _ = receiver.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines()]
    assert receiver.returncode == 1 and time.monotonic() - started < 15  # no hang
    assert len(lines) >= 2 and all("error" not in line for line in lines[:-1])  # the windows before stand
    assert "no data for 3 s (stalled stream)" in lines[-1]["error"]


def test_a_stream_that_never_starts_is_an_error_not_a_hang(colearn_export):
    import time

    started = time.monotonic()
    receiver = receive(colearn_export[0], f"udp://127.0.0.1:{free_port()}", "--window", "2", "--timeout", "2")
    out, _ = receiver.communicate(timeout=60)
    assert receiver.returncode == 1 and time.monotonic() - started < 30
    assert "cannot open the stream" in json.loads(out.splitlines()[-1])["error"]


def test_lavfi_source_paced_like_a_live_one(colearn_export):
    source = "lavfi:testsrc=size=320x240:rate=15[out0];sine=frequency=220:sample_rate=16000[out1]"
    result = CliRunner().invoke(
        main, ["infer", source, "--models", str(colearn_export[0]), "--window", "2", "--hop", "1", "--max-seconds", "4"]
    )
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith('{"modality"')]
    assert result.exit_code == 0, result.output
    assert [(line["start"], line["end"]) for line in lines] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)]
    assert all(line["modality"] == "a" and "latency_ms" in line for line in lines)  # test pattern: no face
    with pytest.raises(Exception, match="live source: give --window"):
        raise_on_error(CliRunner().invoke(main, ["infer", source, "--models", str(colearn_export[0])]))


def raise_on_error(result):
    if result.exit_code:
        raise RuntimeError(result.output)


def test_ctrl_c_stops_after_the_current_window_with_a_summary(colearn_export):
    import signal

    source = "lavfi:testsrc=size=320x240:rate=15[out0];sine=frequency=220:sample_rate=16000[out1]"
    receiver = receive(colearn_export[0], source, "--window", "2", "--hop", "1")  # endless without Ctrl-C
    first = receiver.stdout.readline()  # a window is out: the stream runs
    receiver.send_signal(signal.SIGINT)
    out, err = receiver.communicate(timeout=30)
    assert receiver.returncode == 0, err
    lines = [json.loads(line) for line in [first, *out.splitlines()]]
    assert all("error" not in line for line in lines) and len(lines) <= 3
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    assert summary["ended"] == "interrupted" and summary["windows"] == len(lines)


def test_camera_source_reads_frames_on_the_capture_clock(long_media):
    from avemo.runtime.stream.devices import CameraSource

    camera = CameraSource(str(long_media), timeout=5)  # OpenCV opens a file as it opens a camera
    frames = list(camera.events())
    camera.close()
    assert len(frames) == 7 * 15  # every frame of the 15-fps file, none dropped
    times = [f.time for f in frames]
    assert times == sorted(times) and times[0] >= 0 and all(f.arrival > 0 for f in frames)
    assert frames[0].rgb().shape == (240, 320, 3)


def test_a_missing_camera_is_an_error_line(colearn_export):
    result = CliRunner().invoke(
        main, ["infer", "--camera", "/dev/video97", "--models", str(colearn_export[0]), "--window", "2"]
    )
    assert result.exit_code == 1
    assert "camera:/dev/video97: cannot open it" in result.output


def test_a_broken_stream_is_opened_again_with_reconnect(colearn_export, ts_media):
    import time

    port = free_port()
    url = f"udp://127.0.0.1:{port}"
    receiver = receive(colearn_export[0], url, "--window", "2", "--hop", "1", "--timeout", "3", "--reconnect", "1",
                       "--max-seconds", "8")  # fmt: skip
    send(ts_media, f"{url}?pkt_size=1316", seconds=4).wait(timeout=30)
    time.sleep(3.5)  # the receiver finds the stall (3 s) and opens the stream again
    send(ts_media, f"{url}?pkt_size=1316").wait(timeout=30)
    out, err = receiver.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines()]
    assert receiver.returncode == 0, out + err
    starts = [line["start"] for line in lines]
    assert starts[0] == 0.0 and max(starts) >= 4.0 and starts == sorted(starts)  # windows go on after the break
    assert lines[-1]["dropped_windows"] > 0  # the windows the break cut are counted


def test_falling_behind_a_live_source_drops_whole_windows_and_says_so(colearn_export):
    import time

    recognizer = Recognizer(colearn_export[0], threads=1)
    infer = recognizer.infer

    def slow_infer(clips):  # a model far slower than real time: 1.2 s per 0.5-s hop
        time.sleep(1.2)
        return infer(clips)

    recognizer.infer = slow_infer
    source = "lavfi:testsrc=size=160x120:rate=15[out0];sine=frequency=220:sample_rate=16000[out1]"
    results = list(recognizer.stream(source, 1.0, 0.5, max_seconds=6.0, max_behind=1.0))
    assert results[-1].dropped_windows > 0  # windows were skipped, and counted
    assert max(r.behind_s for r in results) > 1.0  # the field says how far behind it was
    starts = [r.start for r in results]
    assert starts == sorted(starts) and len(starts) + results[-1].dropped_windows <= 11  # whole windows, in order


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_connecting_or_stalled_ends_within_a_second(colearn_export, tmp_path, sig):
    """Before any data (still opening) and during a stall (no data for a while): exit 0 with the summary."""
    import signal
    import time

    port = free_port()
    receiver = receive(colearn_export[0], f"udp://127.0.0.1:{port}", "--window", "2", "--timeout", "60")
    receiver.send_signal(getattr(signal, sig))
    sent = time.monotonic()
    _, err = receiver.communicate(timeout=30)
    assert receiver.returncode == 0 and time.monotonic() - sent < 2.0, err
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    assert summary["ended"] == "interrupted" and summary["windows"] == 0

    port = free_port()
    receiver = receive(colearn_export[0], f"udp://127.0.0.1:{port}", "--window", "1", "--timeout", "60")
    ts = write_media(tmp_path / "live.ts", seconds=3.0, size=(160, 120))
    send(ts, f"udp://127.0.0.1:{port}?pkt_size=1316").wait(timeout=30)
    assert receiver.stdout.readline()  # a window came out; now the stream is silent
    time.sleep(1.5)
    receiver.send_signal(getattr(signal, sig))
    sent = time.monotonic()
    _, err = receiver.communicate(timeout=30)
    assert receiver.returncode == 0 and time.monotonic() - sent < 2.0, err
    assert json.loads(err.strip().splitlines()[-1])["summary"]["ended"] == "interrupted"


def test_a_live_stream_whose_timestamps_restart_goes_on_in_a_new_segment(colearn_export, tmp_path):
    """An encoder restarting mid-stream (the sender starts a new muxer where the joined file's times restart)."""
    one = write_media(tmp_path / "one.ts", seconds=3.0, size=(160, 120)).read_bytes()
    (tmp_path / "joined.ts").write_bytes(one + one)
    port = free_port()
    receiver = receive(colearn_export[0], f"udp://127.0.0.1:{port}", "--window", "2", "--hop", "1",
                       "--max-seconds", "5", "--timeout", "8")  # fmt: skip
    sender = send(tmp_path / "joined.ts", f"udp://127.0.0.1:{port}?pkt_size=1316")
    out, err = receiver.communicate(timeout=60)
    assert sender.wait(timeout=30) == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert receiver.returncode == 0, out + err
    assert [(line["start"], line["end"]) for line in lines] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0)]
    assert lines[-1]["frames_sampled"] == 6  # frames after the restart (about 3 s in) are placed, not lost
    said = [re.findall(r"timestamps restarted or jumped at ([0-9.]+) s", " ".join(line["notes"])) for line in lines]
    seam = float(next(s for s in said if s)[0])
    assert 2.5 < seam < 3.5  # where the first recording ended (stream time counts from the first packet)
    assert [bool(s) for s in said] == [line["start"] <= seam < line["end"] for line in lines]  # said where it is
