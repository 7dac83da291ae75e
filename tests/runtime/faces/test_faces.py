"""No false face chosen: hysteresis, plausibility, the choice among tracks, on generated scenes (media/scenes)."""

import numpy as np
import pytest

from avemo.config import FeatureConfig
from avemo.runtime.faces import Face, FacePipeline, open_detector, preference
from avemo.runtime.faces.tracking import KEEP_SCORE, MAX_GAP, START_SCORE, FaceTracker, iou, plausible
from avemo.runtime.media.extract import extract
from avemo.runtime.media.sample import face_photo
from avemo.runtime.media.scenes import Scene, write_clip

FEATURES = FeatureConfig()


@pytest.fixture(scope="module")
def yunet():
    return open_detector("yunet")


class DimmedDetector:
    """A test double around the real YuNet that scales every score by ``factor`` and, like YuNet,
    drops faces that then score below its threshold (0.6)."""

    def __init__(self, inner):
        self.inner, self.name, self.sha256, self.factor = inner, inner.name, inner.sha256, 1.0

    def detect(self, rgb, min_side=0.0, max_side=None):
        faces = [Face(f.box, f.score * self.factor, f.landmarks) for f in self.inner.detect(rgb, min_side, max_side)]
        return [f for f in faces if f.score >= KEEP_SCORE]


def test_a_track_starts_on_a_high_score_and_lives_on_a_lower_one(yunet):
    frame = np.full((360, 640, 3), 80, np.uint8)
    frame[40:296, 200:456] = face_photo(256)
    real = yunet.detect(frame)[0].score
    detector = DimmedDetector(yunet)
    tracker = FaceTracker(detector, 640)
    starting, keeping = (START_SCORE - 0.03) / real, (KEEP_SCORE + 0.05) / real
    detector.factor = starting  # found, but below the start score: no track
    assert detector.detect(frame) and tracker.update(frame) == []
    detector.factor = 1.0
    [(track, _)] = tracker.update(frame)
    detector.factor = keeping  # a turned or dim frame: the track goes on
    for _ in range(2 * tracker.redetect_every):  # through window searches and full ones
        assert [i for i, _ in tracker.update(frame)] == [track]
    detector.factor = 0.5 / real  # below the detector's own threshold: lost
    for _ in range(MAX_GAP + 1):
        assert tracker.update(frame) == []
    detector.factor = keeping  # forgotten: a weak face starts nothing again
    assert detector.detect(frame) and tracker.update(frame) == []


def test_a_periodic_background_false_face_is_found_but_never_tracked(yunet):
    scene = Scene("no face", 20.0, size=(640, 360))
    tracker = FaceTracker(yunet, 640)
    raw = []
    for k in range(12):
        rgb, truth = scene.render(k / 3)
        assert truth == []
        raw += yunet.detect(rgb)
        assert tracker.update(rgb) == []
    # The detector alone is fooled, some of the time at the start score.
    assert len(raw) >= 8 and max(f.score for f in raw) >= 0.7 and max(f.box[3] for f in raw) > 200


def test_plausibility_of_real_and_hostile_boxes(yunet):
    frame = np.full((360, 640, 3), 80, np.uint8)
    frame[40:296, 200:456] = face_photo(256)
    [face] = yunet.detect(frame)
    assert plausible(face, 640, 360)
    x, y, w, h = face.box
    assert not plausible(face.moved(-x - 0.6 * w, 0, 1.0), 640, 360)  # mostly left of the frame
    assert not plausible(face.moved(0, 360 - y - 0.3 * h, 1.0), 640, 360)  # mostly below it
    assert plausible(face.moved(-x - 0.2 * w, 0, 1.0), 640, 360)  # a little cut: still a face
    assert not plausible(Face((x, y, 2 * w, h), face.score, face.landmarks), 640, 360)  # twice as wide
    marks = face.landmarks
    cases = {
        "upside down": marks * [1, -1] + [0, 2 * y + h],
        "eyes swapped (a face seen from behind)": marks[[1, 0, 2, 4, 3]],
        "mouth on the eyes' line": marks[[0, 1, 2, 0, 1]],
        "nose below the mouth": marks[[0, 1, 3, 2, 4]] * [1, 1] + [[0, 0], [0, 0], [0, 0.3 * h], [0, 0], [0, 0]],
        "landmarks outside the box": marks + np.array([2 * w, 0]),
    }
    for why, hostile in cases.items():
        assert not plausible(Face(face.box, face.score, hostile), 640, 360), why
    assert plausible(Face(face.box, 1.0, None), 640, 360)  # Haar: no landmarks, box checks only


def _face(box, score):
    return Face(box, score), np.zeros((1, 1, 3), np.uint8)


def test_the_choice_weighs_score_and_stability_before_size():
    small, big, other = (100, 100, 50, 60), (0, 0, 300, 360), (400, 100, 80, 96)
    frames = [{0: _face(small, 0.9)} for _ in range(10)]
    for frame in frames[:3]:
        frame[1] = _face(big, 0.82)  # bigger, but brief
    assert preference(frames) == [0, 1]
    for frame in frames:
        frame[2] = _face(other, 0.85)  # as steady as the first and larger: the larger of two steady faces
    assert preference(frames)[:2] == [2, 0]


def test_one_face_over_a_periodic_background_is_the_face_chosen(tmp_path):
    clip = tmp_path / "periodic.mp4"
    truth = write_clip(clip, "periodic", 8.0, size=(640, 360), fps=15)
    got = extract(clip, FEATURES, FacePipeline(FEATURES, "largest"))
    assert got.frames_sampled == 24 and got.frames_with_face >= 0.95 * 24
    assert got.face["faces_seen"] <= 2 and got.face["score"] >= START_SCORE - 0.1
    x, y, w, h = got.face["box"]
    assert x >= 0 and y >= 0 and x + w <= 640 and y + h <= 360 and h < 200  # inside, the face's size
    inside = [iou(box, truth[round(t, 3)][0]) >= 0.5 for t, box in zip(got.face_times, got.face_boxes, strict=True)]
    assert np.mean(inside) >= 0.95


def test_haar_scores_by_its_last_stage_and_the_pattern_starts_no_track():
    import cv2

    haar = open_detector("haar")
    scene = Scene("no face", 20.0, size=(640, 360))
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    tracker, fooled = FaceTracker(haar, 640), 0
    for k in range(0, 24, 2):
        rgb, _ = scene.render(k / 3)
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        fooled += len(cascade.detectMultiScale(gray, 1.1, 5, minSize=(45, 45)))  # OpenCV's plain call
        assert tracker.update(rgb) == []
    assert fooled >= 6  # the cascade alone takes the pattern for faces
    [face] = haar.detect(face_photo(512))
    assert START_SCORE <= face.score < 1.0  # a real face: a high score, no longer a constant 1


def test_a_face_glimpsed_briefly_is_not_called_the_speaker_on_a_chance_correlation():
    """A face seen in 10 frame pairs that happens to correlate 0.6+ with the audio, beside a face in view for 42:
    not the speaker (an independent probe's two-photo clip chose the glimpsed one, 11 of 45 frames)."""
    from avemo.runtime.faces.speaker import choose_speaker

    rng = np.random.default_rng(3)
    activity = rng.random(43)
    steady = {k: float(v) for k, v in enumerate(rng.random(43), 1) if k < 43}  # in view throughout, unrelated
    glimpse = {k: float(activity[k] + 0.2 * rng.random()) for k in range(1, 11)}  # follows the audio, briefly
    choice = choose_speaker({0: glimpse, 1: steady}, activity)
    assert choice.track != 0, choice
    assert 0 not in choice.scores
    # the same glimpsed face, in view as long as the other, is the speaker
    both = {0: {k: float(activity[k] + 0.2 * rng.random()) for k in range(1, 43)}, 1: steady}
    assert choose_speaker(both, activity).track == 0
