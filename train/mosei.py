"""CMU-MOSEI preparation (`avemo prepare`): labels from the SDK's .csd, segments cut from full videos.

Layout read (CMU-MultimodalSDK):

    <root>/**/CMU_MOSEI_Labels.csd            HDF5: /<name>/data/<video_id>/{features N x 7, intervals N x 2}
    <root>/Raw/Videos/Full/Combined/<id>.mp4
    <root>/Raw/Audio/Full/WAV_16000/<id>.wav  (optional: preferred for audio when present)

Label columns are sentiment, happy, sad, anger, surprise, disgust, fear; an
emotion is present when its score is > 0. A segment inherits its video's
official fold. Each segment is one unit of work: parallel over processes,
written atomically, skipped when already done (resumable, Ctrl-C safe), and a
failure is logged (JSONL) without stopping the run.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, as_completed
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from avemo.config import FeatureConfig
from avemo.contract import DEFAULT_FACE_DETECTOR, LABELS
from avemo.errors import AvemoError
from avemo.io import DISK_ERRORS, MAX_JSON_BYTES, atomic_write_bytes, atomic_write_json, cannot_write
from avemo.process import child_pool
from avemo.train.cache import SPLITS, CacheWriter, Clip, encode_jpeg
from avemo.train.synth import MOSEI_SPLIT_SIZES, MOSEI_TRAIN_POSITIVES

LABELS_FILE = "CMU_MOSEI_Labels.csd"
VIDEO_DIR = Path("Raw/Videos/Full/Combined")
AUDIO_DIR = Path("Raw/Audio/Full/WAV_16000")
MIN_SEGMENT_SECONDS = 0.1


@dataclass(frozen=True)
class Segment:
    clip_id: str
    video_id: str
    split: str
    start: float
    end: float
    labels: tuple[float, ...]


def load_folds(path: Path | None = None) -> dict[str, str]:
    """video id -> split, from the official folds (packaged) or a user's JSON of the same shape:
    ``{"train": [ids], "valid": [ids], "test": [ids]}``; AvemoError (one line) for anything else."""
    if path is None:
        return _parse_folds(resources.files("avemo").joinpath("data/cmu_mosei_standard_folds.json").read_text())
    try:
        if Path(path).stat().st_size > MAX_JSON_BYTES:
            raise AvemoError(f"{path}: too large for a folds file")
        return _parse_folds(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise AvemoError(f"{path}: unreadable folds file ({getattr(exc, 'strerror', None) or exc})") from None
    except AvemoError as exc:
        raise AvemoError(f"{path}: {exc}") from None


def _parse_folds(text: str) -> dict[str, str]:
    try:
        folds = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise AvemoError(f"not JSON ({str(exc)[:200]})") from None
    if not isinstance(folds, dict) or set(SPLITS) - set(folds):
        raise AvemoError(f"not a folds file: expected a JSON object with lists {', '.join(map(repr, SPLITS))}")
    found: dict[str, str] = {}
    for split in SPLITS:
        ids = folds[split]
        if not isinstance(ids, list) or not all(isinstance(v, str) and v for v in ids):
            raise AvemoError(f"not a folds file: {split!r} must be a list of video ids (strings)")
        for vid in ids:
            if found.setdefault(vid, split) != split:
                raise AvemoError(f"video {vid!r} is in both {found[vid]!r} and {split!r}")
    return found


def find_labels_file(root: Path) -> Path:
    direct = Path(root) / LABELS_FILE
    if direct.is_file():
        return direct
    found = sorted(Path(root).rglob(LABELS_FILE))
    if not found:
        raise AvemoError(f"{root}: no {LABELS_FILE} found (expected the CMU-MultimodalSDK layout)")
    return found[0]


def read_segments(csd: Path, folds: dict[str, str]) -> tuple[list[Segment], Counter]:
    """Every labelled segment with its fold; a Counter of what was skipped and why."""
    import h5py

    skipped: Counter = Counter()
    segments: list[Segment] = []
    try:
        handle = h5py.File(csd, "r")
    except OSError as exc:
        raise AvemoError(f"{csd}: not a readable HDF5 .csd file ({exc})") from None
    with handle:
        roots = list(handle.keys())
        if not roots or "data" not in handle[roots[0]]:
            raise AvemoError(f"{csd}: no /<name>/data group (not the CMU-MultimodalSDK layout)")
        data = handle[roots[0]]["data"]
        for vid in data:
            try:
                feats = np.asarray(data[vid]["features"], np.float64)
                intervals = np.asarray(data[vid]["intervals"], np.float64)
            except KeyError:
                skipped["video entry without features/intervals"] += 1
                continue
            if feats.ndim != 2 or feats.shape[1] != 1 + len(LABELS) or len(feats) != len(intervals):
                skipped["labels with an unexpected shape"] += len(feats)
                continue
            split = folds.get(vid)
            if split is None:
                skipped["video not in the folds"] += len(feats)
                continue
            order = np.argsort(intervals[:, 0], kind="stable")  # intervals may come unsorted
            for i, row in enumerate(order):
                start, end = max(0.0, float(intervals[row, 0])), float(intervals[row, 1])
                if not np.isfinite([start, end]).all() or end - start < MIN_SEGMENT_SECONDS:
                    skipped["empty or invalid interval"] += 1
                    continue
                labels = tuple(float(v > 0) for v in feats[row, 1:])
                segments.append(Segment(f"{_safe(vid)}_{i}", vid, split, start, end, labels))
    return segments, skipped


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


_worker: dict[str, Any] = {}


def _init_worker(features: FeatureConfig, faces: str, out: str, threads: int = 0) -> None:
    from avemo.runtime.faces import FacePipeline

    if threads:  # several worker processes: one OpenCV thread each, no oversubscription
        import cv2

        cv2.setNumThreads(threads)
    _worker.update(
        features=features,
        faces=FacePipeline(features, faces, threads=threads or None),  # the features' detector, hash-checked
        writer=CacheWriter(Path(out), features, source="mosei"),
    )


def _process(segment: Segment, video: str | None, audio: str | None) -> dict[str, Any]:
    """Extract and write one segment; never raises (the reason goes into the result)."""
    from avemo.runtime.media.extract import extract

    features: FeatureConfig = _worker["features"]
    result: dict[str, Any] = {"clip": segment.clip_id, "split": segment.split}
    try:
        media = extract(
            Path(video) if video else None,
            features,
            _worker["faces"],
            segment.start,
            segment.end,
            audio=Path(audio) if audio else None,
        )
        result.update(notes=media.notes, frames=media.frames_sampled, no_face=media.frames_sampled - len(media.faces))
        if not media.has_audio and not media.faces:
            result["error"] = "; ".join(media.notes) or "nothing decoded (interval outside the media?)"
            return result
        fb = media.fbank if media.has_audio else np.zeros((0, features.num_mel_bins), np.float32)
        jpegs = [encode_jpeg(face, features.jpeg_quality) for face in media.faces]
        _worker["writer"].add(segment.split, Clip(segment.clip_id, fb, jpegs, np.array(segment.labels, np.float32)))
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:  # a bad input file: that segment's failure
            result["error"] = f"{type(exc).__name__}: {exc}"
        else:  # the disk is full: every segment would fail; the run stops
            result["fatal"] = str(cannot_write(exc.filename or segment.clip_id, exc))
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, AvemoError) else str(exc)
    return result


def _media_paths(root: Path, vid: str) -> tuple[str | None, str | None]:
    video, audio = Path(root) / VIDEO_DIR / f"{vid}.mp4", Path(root) / AUDIO_DIR / f"{vid}.wav"
    return (str(video) if video.is_file() else None, str(audio) if audio.is_file() else None)


def prepare(
    root: Path,
    out: Path,
    features: FeatureConfig,
    workers: int = 1,
    folds_path: Path | None = None,
    detector: str = DEFAULT_FACE_DETECTOR,
    faces: str = "speaker",
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or resume) a feature cache from a MOSEI tree; returns the summary written beside it.

    ``detector`` (yunet, haar or a YuNet ONNX path) is recorded in the cache's features with
    its weights' hash, so the model trained on it is served with the same detector.
    """
    from tqdm import tqdm

    from avemo.runtime.faces import features_for_detector

    features = features_for_detector(features, detector)

    csd = find_labels_file(root)
    segments, skipped = read_segments(csd, load_folds(folds_path))
    writer = CacheWriter(out, features, source="mosei")  # refuses a cache made with other settings
    writer.discard_partial()  # what a killed run was writing: those clips are done again
    todo = [s for s in segments if not writer.has(s.split, s.clip_id)]
    print(f"{csd}: {len(segments)} segments, {len(segments) - len(todo)} already done, {len(todo)} to do")
    failures_path = Path(out) / "failures.jsonl"
    pending = {s.clip_id for s in todo}
    compact_failures(failures_path, pending)  # before appending: a truncated last line would spoil the next
    counts: Counter = Counter()
    start = time.perf_counter()
    jobs = [(s, *_media_paths(root, s.video_id)) for s in todo]
    with failures_path.open("a") as failures, tqdm(total=len(jobs), unit="clip", disable=not progress) as bar:
        try:
            for result in _run(jobs, features, faces, out, workers):
                if "fatal" in result:
                    raise AvemoError(f"{result['fatal']}; finished clips are kept: rerun to resume")
                bar.update(1)
                counts["frames"] += result.get("frames", 0)
                counts["frames without face"] += result.get("no_face", 0)
                if "error" in result:
                    counts["failed"] += 1
                    failures.write(json.dumps({"clip": result["clip"], "reason": result["error"]}) + "\n")
                    failures.flush()
                else:
                    counts["done"] += 1
                    for note in result.get("notes", []):
                        counts["note: " + re.sub(r"[-\d.]+", "N", note)] += 1
        except KeyboardInterrupt:
            raise AvemoError(
                f"interrupted after {counts['done']} new clips; finished clips are kept: rerun to resume"
            ) from None
        finally:
            compact_failures(failures_path, {s.clip_id for s in todo if not writer.has(s.split, s.clip_id)})
    split_counts = writer.pack()
    summary = _summary(out, features, split_counts, skipped, counts, time.perf_counter() - start, len(jobs))
    atomic_write_json(Path(out) / "prepare_summary.json", summary)
    return summary


def compact_failures(path: Path, pending: set[str]) -> None:
    """Rewrite ``path`` (JSON lines ``{"clip", "reason"}``) with one line per clip, its latest, for the clips
    of ``pending`` only (those done since, or no longer segments, are dropped); lines that do not parse (the
    truncated last line of a killed run or a full disk) are dropped."""
    if not path.is_file():
        return
    latest: dict[str, str] = {}
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
            latest[record["clip"]] = str(record["reason"])
        except (ValueError, TypeError, KeyError):
            continue
    kept = "".join(json.dumps({"clip": c, "reason": r}) + "\n" for c, r in latest.items() if c in pending)
    atomic_write_bytes(path, kept.encode())


def _run(
    jobs: list[tuple[Segment, str | None, str | None]],
    features: FeatureConfig,
    faces: str,
    out: Path,
    workers: int,
) -> Iterator[dict[str, Any]]:
    args = (features, faces, str(out))
    if workers <= 1:
        _init_worker(*args)
        for job in jobs:
            yield _process(*job)
        return
    with child_pool(workers, _init_worker, (*args, 1)) as pool:  # workers end with this process, even killed
        futures: list[Future] = [pool.submit(_process, *job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _summary(
    out: Path,
    features: FeatureConfig,
    split_counts: dict[str, int],
    skipped: Counter,
    counts: Counter,
    seconds: float,
    n: int,
) -> dict[str, Any]:
    from avemo.train.cache import CacheSplit

    positives = {}
    for split in SPLITS:
        if split_counts.get(split):
            labels = CacheSplit(out, split).labels
            positives[split] = {name: int(labels[:, k].sum()) for k, name in enumerate(LABELS)}
    return {
        "clips": split_counts,
        "paper_clips": MOSEI_SPLIT_SIZES,
        "train_positives": positives.get("train", {}),
        "paper_train_positives": MOSEI_TRAIN_POSITIVES,
        "positives": positives,
        "skipped_segments": dict(skipped),
        "this_run": {**dict(counts), "seconds": seconds, "clips_per_second": n / seconds if seconds > 0 else 0.0},
        "features": asdict(features),
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["split   clips  (paper)"]
    for split in SPLITS:
        lines.append(f"{split:<6} {summary['clips'].get(split, 0):>6}  ({summary['paper_clips'][split]:,})")
    if summary["train_positives"]:
        lines.append(
            "train positives: "
            + ", ".join(
                f"{k} {summary['train_positives'][k]} ({summary['paper_train_positives'][k]:,})" for k in LABELS
            )
        )
    for key, value in {**summary["skipped_segments"], **summary["this_run"]}.items():
        lines.append(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    return "\n".join(lines)
