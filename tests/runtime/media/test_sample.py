"""`avemo sample`: the demo's and the tests' clip from the installed package, with the faces shipped in it."""

from __future__ import annotations

import av
import numpy as np
from click.testing import CliRunner

from avemo.cli import main
from avemo.runtime.faces import open_detector
from avemo.runtime.media.sample import _photo


def test_the_shipped_faces_are_the_scikit_image_photographs_crops():
    from skimage import data

    assert np.array_equal(_photo("astronaut"), data.astronaut()[20:340, 60:380])
    assert np.array_equal(_photo("camera"), np.repeat(data.camera()[60:300, 120:360][:, :, None], 3, axis=2))


def _streams(path):
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        frame = next(container.decode(video)).to_ndarray(format="rgb24")
        return float(container.duration / 1e6), (video.width, video.height), audio.rate, frame


def test_sample_writes_a_talking_face_clip_with_one_or_two_real_faces(tmp_path):
    runner = CliRunner()
    done = runner.invoke(main, ["sample", str(tmp_path / "one.mp4"), "--seconds", "2", "--size", "640x360"])
    assert done.exit_code == 0, done.output
    seconds, size, rate, frame = _streams(tmp_path / "one.mp4")
    assert abs(seconds - 2.0) < 0.2 and size == (640, 360) and rate == 16000
    detector = open_detector("yunet")
    assert len(detector.detect(frame)) == 1  # a real face the model's own detector finds
    done = runner.invoke(main, ["sample", str(tmp_path / "two.mp4"), "--faces", "2", "--seconds", "2"])
    assert done.exit_code == 0, done.output
    assert len(detector.detect(_streams(tmp_path / "two.mp4")[3])) == 2
    bad = runner.invoke(main, ["sample", str(tmp_path / "no" / "x.mp4")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    bad = runner.invoke(main, ["sample", str(tmp_path / "x.mp4"), "--size", "big"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
