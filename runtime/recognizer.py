"""Recognizer: media file or arrays -> per-clip emotion probabilities, choosing the A, V or A+V graph.

Thread safety: one Recognizer may be shared by several threads. ONNX Runtime
sessions are safe to run concurrently; the face detector serialises its own
calls with a lock (decoding, features and inference still overlap).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import (
    AUDIO_FEATS,
    AUDIO_LENGTHS,
    AUDIO_POOLING,
    FACE_LENGTHS,
    FACES,
    FACES_DTYPE,
    GRAPH_INPUTS,
    LABELS,
    MAX_POSITIONS,
    MODALITY_TITLES,
    PROFILE_BATCH,
)
from avemo.errors import AvemoError
from avemo.runtime.backends import Backend, faces_for, open_backend, resolve_backend, write_padded
from avemo.runtime.faces import FacePipeline
from avemo.runtime.media.audio import add_deltas
from avemo.runtime.media.extract import MediaFeatures, extract
from avemo.runtime.models.manifest import load_manifest
from avemo.runtime.timing import stage

THRESHOLD = 0.5
LIVE_FIELDS = ("latency_ms", "behind_s", "dropped_windows")  # only in results from live sources


@dataclass
class Recognition:
    """The result for one clip (or one window of a long file)."""

    modality: str  # "av", "a" or "v": the graph that was used
    probs: dict[str, float]
    backend: str  # "ort" or "trt"
    labels: list[str]  # emotions with probability >= threshold
    source: str = ""
    start: float | None = None
    end: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    latency_ms: float | None = None  # live sources: arrival of the window's last data -> this result
    behind_s: float | None = None  # live sources: how far the source had gone past this window's end
    dropped_windows: int | None = None  # live sources: windows skipped so far because processing fell behind
    frames_sampled: int | None = None  # video frames taken at 3 fps (media input only)
    frames_with_face: int | None = None  # of those, frames with the chosen face (the model's face crops)
    face: dict[str, Any] = field(default_factory=dict)  # the chosen face: box, choice, confidence, faces_seen
    seconds: float | None = None  # media seconds analysed (audio, else sampled video): for the real-time factor

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None or k not in LIVE_FIELDS}
        out["modality_title"] = MODALITY_TITLES[self.modality]
        return out


@dataclass
class ClipInput:
    """Model-ready arrays of one clip; either may be empty."""

    audio: np.ndarray  # [T, 240] float32 (T = 0: no audio)
    faces: np.ndarray  # [N, 3, S, S] uint8 RGB pixels (N = 0: no face): the graphs cast and scale them


class Recognizer:
    """Loads an exported model directory (hash-checked) and recognises clips on its backends (ONNX Runtime or
    TensorRT), one per graph, which it owns and closes."""

    def __init__(
        self,
        models: Path,
        precision: str | None = None,
        threads: int | None = None,
        face_detector: str | None = None,
        threshold: float = THRESHOLD,
        providers: list[str] | None = None,
        backend: str = "ort",
        faces: str = "speaker",
        device_id: int = 0,
    ) -> None:
        """``face_detector`` overrides the model's own (warned about); ``faces``: speaker or largest.

        ``precision`` None: fp32 on ONNX Runtime; on TensorRT (``backend`` trt or auto) the engines built
        for this GPU (fp16, else int8, else fp32). ``backend_reason`` says what was chosen and why.
        """
        self.manifest = load_manifest(models)
        self.features = self.manifest.features
        self.threshold = threshold
        chosen = resolve_backend(backend, self.manifest, precision, device_id)
        self.backend, self.precision, self.backend_reason = chosen
        notes = (self.manifest.accuracy_warning(self.precision), self.manifest.faces_note())
        self.model_notes = [n for n in notes if n]  # said in every result of these graphs
        self.backends: dict[str, Backend] = {}
        scratch = None
        if self.backend == "trt":  # one activation area for the three engines
            from avemo.runtime.backends.gpu import DeviceScratch

            scratch = DeviceScratch(device_id)
        try:
            for m in self.manifest.modalities:
                self.backends[m] = open_backend(  # "pipeline": decoding and face detection run beside the graphs
                    self.manifest, m, self.precision, self.backend, threads, providers, device_id, scratch,
                    workload="pipeline",
                )
        except BaseException:
            self.close()
            raise
        own = dataclasses.replace(self.features, face_detector=self.manifest.face_detector)  # confined to the folder
        self.faces = FacePipeline(own, faces, face_detector, providers, threads) if self._has("v") else None

    def close(self) -> None:
        """Release the graphs (TensorRT engines, contexts and buffers); safe to call twice or from another thread."""
        for graph in list(self.backends.values()):
            graph.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _has(self, modality: str) -> bool:
        return any(modality in m for m in self.manifest.modalities)

    def choose(self, has_audio: bool, has_faces: bool) -> str:
        """A+V when the clip has both, else the modality it has; limited to the graphs this model has."""
        wanted = [m for m in ("av", "a", "v") if (("a" not in m) or has_audio) and (("v" not in m) or has_faces)]
        for modality in wanted:
            if modality in self.backends:
                return modality
        have = "audio" if has_audio else "faces" if has_faces else "neither audio nor a face"
        raise AvemoError(f"the clip has {have}; this model needs {' or '.join(self.manifest.modalities)} input")

    def prepare(
        self, media: Path, start: float = 0.0, end: float | None = None, timings: dict[str, float] | None = None
    ) -> tuple[ClipInput, MediaFeatures]:
        """Decode and featurise a media file (or the segment [start, end)); returns arrays and what was found.

        ``timings`` (optional) receives the milliseconds per stage (see ``extract``).
        """
        feats = extract(Path(media), self.features, self.faces, start, end, timings=timings)
        with stage(timings, "audio features"):
            return self._clip_input(feats), feats

    def _clip_input(self, feats: MediaFeatures) -> ClipInput:
        audio = add_deltas(feats.fbank, self.features.delta_window) if feats.has_audio and self._has("a") else None
        s = self.features.face_size
        faces = np.stack(feats.faces).transpose(0, 3, 1, 2) if feats.faces else None  # bytes, copied once by batching
        return ClipInput(
            audio if audio is not None else np.zeros((0, self.features.audio_dim), np.float32),
            faces if faces is not None else np.zeros((0, 3, s, s), FACES_DTYPE),
        )

    def infer(self, clips: list[ClipInput]) -> list[Recognition]:
        """Recognise several clips: grouped by modality, batched by similar length, in input order."""
        results: list[Recognition | None] = [None] * len(clips)
        groups: dict[str, list[int]] = {}
        for i, clip in enumerate(clips):
            self._check(clip, i)
            groups.setdefault(self.choose(len(clip.audio) > 0, len(clip.faces) > 0), []).append(i)
        for modality, indices in groups.items():
            indices.sort(key=lambda i: len(clips[i].audio) + 30 * len(clips[i].faces))
            step = getattr(self.backends[modality], "max_batch", PROFILE_BATCH[2])  # an engine's own limit
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                t0 = time.perf_counter()
                batch = [clips[i] for i in chunk]
                with self.backends[modality].staging(batch_shapes(batch, modality)) as staged:
                    fill_batch(staged.arrays, batch)  # the one host pass: straight where the backend reads
                    probs = staged.run()
                ms = 1000 * (time.perf_counter() - t0)
                for i, p in zip(chunk, probs, strict=True):
                    results[i] = self._result(modality, p, {"inference": ms, "batch": len(chunk)})
        return [r for r in results if r is not None]

    def recognize(self, media: Path, start: float = 0.0, end: float | None = None) -> Recognition:
        """One media file (or a segment of it) -> Recognition, with decode/feature and inference timings.

        A whole file is decoded in one pass and recognised window by window (``clip_seconds`` each) as the
        windows complete, their probabilities averaged by length: memory stays bounded for any length. A
        segment ``[start, end)`` is decoded at once (callers keep it short)."""
        if not start and end is None:
            return self._recognize_file(Path(media))
        t0 = time.perf_counter()
        clip, feats = self.prepare(media, start, end)
        return self._recognized(str(media), (start, end), clip, feats, 1000 * (time.perf_counter() - t0))

    def _recognize_file(self, media: Path) -> Recognition:
        from avemo.runtime.stream.sources import file_source
        from avemo.runtime.stream.windows import WindowCutter

        t0 = time.perf_counter()
        info, events = file_source(media, self.features.sample_rate, video=self.needs_video)
        limit = self.clip_seconds
        cutter = WindowCutter(self.features, self.faces, info, itertools.count(0.0, limit), limit)
        parts: list[tuple[Recognition, float, bool, bool]] = []
        windows = itertools.chain(itertools.chain.from_iterable(cutter.feed(e) for e in events), cutter.close())
        for _, _, feats in windows:  # lazily: each event is decoded, fed and dropped before the next
            if self.needs_video and not info.has_video:
                feats.notes.append("no video frames")  # as a whole-file decode says
            clip = self._clip_input(feats)
            if parts and not (len(clip.audio) or len(clip.faces)):
                continue  # an empty stretch after the first window (a gap, a few ms of tail): nothing to weigh
            result = self._recognized(str(media), (None, None), clip, feats, 0.0)
            parts.append((result, self._seconds(clip, feats.face_times), len(clip.audio) > 0, len(clip.faces) > 0))
        if not parts:
            raise AvemoError(f"{media}: no audio or video decoded")
        result = parts[0][0] if len(parts) == 1 else self._combined(parts)
        inference = sum(r.timings_ms["inference"] for r, *_ in parts)
        result.timings_ms = {"features": 1000 * (time.perf_counter() - t0) - inference, "inference": inference}
        return result

    def stream(
        self, source: Path | str, window: float, hop: float | None = None, **options: Any
    ) -> Iterator[Recognition]:
        """Windows ``[s, s + window)`` every ``hop`` s over a file or a live source, decoded in one pass, each
        recognised as soon as it is complete (live: with its lag). ``options`` (timeout, max_seconds, stop,
        max_behind, reconnect) and the details: ``avemo.runtime.stream.run.stream_windows``."""
        from avemo.runtime.stream.run import stream_windows

        for w in stream_windows(self.features, self.faces, source, window, hop, self.needs_video, **options):
            result = self.recognize_features(w.features, w.source, (w.start, w.end), w.features_ms)
            if w.lag is not None:  # measured now that the result is ready
                result.latency_ms, result.behind_s, result.dropped_windows = dataclasses.astuple(w.lag())
            yield result

    @property
    def needs_video(self) -> bool:
        """Whether any of the model's graphs reads faces (else video is not decoded)."""
        return self._has("v")

    def recognize_features(
        self, feats: MediaFeatures, source: str, span: tuple[float | None, float | None], features_ms: float
    ) -> Recognition:
        """The Recognition of already extracted features (a window cut from a stream)."""
        return self._recognized(source, span, self._clip_input(feats), feats, features_ms)

    def _recognized(
        self, source: str, span: tuple[float | None, float | None], clip: ClipInput, feats: MediaFeatures, ms: float
    ) -> Recognition:
        pieces = self.split_long(clip, feats.face_times)
        result = self.infer([clip])[0] if len(pieces) == 1 else self._averaged(clip, pieces)
        result.notes = [*feats.notes, *result.notes]
        result.source = source
        result.start, result.end = span
        result.frames_sampled, result.frames_with_face, result.face = (
            feats.frames_sampled,
            feats.frames_with_face,
            feats.face,
        )
        result.timings_ms = {"features": ms, "inference": result.timings_ms["inference"]}
        f = self.features  # audio frames time the clip best; video only by its 3-fps ticks
        seconds = len(feats.fbank) * f.frame_shift_ms / 1000 if feats.has_audio else feats.frames_sampled / f.fps
        result.seconds = round(seconds, 3)
        return result

    @property
    def clip_seconds(self) -> float:
        """The longest clip the model takes at once: its engine profiles' maximum (30 s), on every backend."""
        return self.manifest.profiles["audio_frames"][2] / self.features.frames_per_second

    def split_long(self, clip: ClipInput, face_times: list[float]) -> list[tuple[ClipInput, float]]:
        """A clip longer than ``clip_seconds`` as consecutive windows of at most that length (audio frames and
        the face crops whose times fall in each), with their lengths in seconds; a shorter clip as itself.
        Both backends cut alike, so TensorRT and ONNX Runtime take the same clips and give the same answers."""
        f = self.features
        times = self._face_times(clip, face_times)
        seconds = self._seconds(clip, face_times)
        limit = self.clip_seconds
        if seconds <= limit + 1e-9:
            return [(clip, seconds)]
        pieces = []
        for k in range(int(np.ceil(seconds / limit - 1e-9))):
            lo, hi = k * limit, min((k + 1) * limit, seconds)
            audio = clip.audio[round(lo * f.frames_per_second) : round(hi * f.frames_per_second)]
            faces = clip.faces[[i for i, t in enumerate(times) if lo <= t < hi]]
            if len(audio) or len(faces):
                pieces.append((ClipInput(audio, faces), hi - lo))
        return pieces

    def _face_times(self, clip: ClipInput, face_times: list[float]) -> list[float]:
        fps = self.features.fps
        return face_times if len(face_times) == len(clip.faces) else [i / fps for i in range(len(clip.faces))]

    def _seconds(self, clip: ClipInput, face_times: list[float]) -> float:
        """A clip's length: its audio's, or up to its last face crop's tick."""
        times = self._face_times(clip, face_times)
        f = self.features
        return max(len(clip.audio) / f.frames_per_second, (times[-1] + 1 / f.fps) if times else 0.0)

    def _averaged(self, clip: ClipInput, pieces: list[tuple[ClipInput, float]]) -> Recognition:
        """One result for a long clip: its windows' probabilities averaged, weighted by their lengths."""
        results = self.infer([piece for piece, _ in pieces])
        parts = [
            (r, seconds, len(piece.audio) > 0, len(piece.faces) > 0)
            for r, (piece, seconds) in zip(results, pieces, strict=True)
        ]
        return self._averaged_results(parts, len(clip.audio) > 0, len(clip.faces) > 0)

    def _averaged_results(
        self, parts: list[tuple[Recognition, float, bool, bool]], has_audio: bool, has_faces: bool
    ) -> Recognition:
        """(result, seconds) of consecutive windows -> one result: probabilities averaged by length, and a note."""
        weights = np.array([seconds for _, seconds, *_ in parts])
        probs = np.average([[r.probs[k] for k in LABELS] for r, *_ in parts], axis=0, weights=weights)
        inference = sum(r.timings_ms["inference"] for r, *_ in parts)
        result = self._result(self.choose(has_audio, has_faces), probs, {"inference": inference, "batch": len(parts)})
        used = sorted({MODALITY_TITLES[r.modality] for r, *_ in parts})
        result.notes.insert(  # first, before the model's own notes (_result)
            0,
            f"{weights.sum():.1f} s is longer than the {self.clip_seconds:g} s the model takes at once: recognised "
            f"in {len(parts)} windows ({'/'.join(used)}), probabilities averaged by length",
        )
        return result

    def _combined(self, parts: list[tuple[Recognition, float, bool, bool]]) -> Recognition:
        """The windows of a file, recognised one by one, as one Recognition (what ``_recognized`` gives)."""
        result = self._averaged_results(parts, any(p[2] for p in parts), any(p[3] for p in parts))
        results = [r for r, *_ in parts]
        notes = [n for r in results for n in r.notes if not n.endswith("averaged by length")]
        result.notes = [*dict.fromkeys(notes), result.notes[0]]
        result.source = results[0].source
        result.frames_sampled = sum(r.frames_sampled or 0 for r in results)
        result.frames_with_face = sum(r.frames_with_face or 0 for r in results)
        result.face = max(results, key=lambda r: r.frames_with_face or 0).face  # the window that saw it most
        return result

    def _check(self, clip: ClipInput, index: int) -> None:
        f = self.features
        if clip.audio.ndim != 2 or clip.audio.shape[1] != f.audio_dim:
            raise AvemoError(f"clip {index}: audio has shape {clip.audio.shape}, expected [frames, {f.audio_dim}]")
        if clip.faces.ndim != 4 or clip.faces.shape[1:] != (3, f.face_size, f.face_size):
            raise AvemoError(
                f"clip {index}: faces have shape {clip.faces.shape}, expected [n, 3, {f.face_size}, {f.face_size}]"
            )
        if len(clip.audio) > AUDIO_POOLING * MAX_POSITIONS or len(clip.faces) > MAX_POSITIONS:
            raise AvemoError(f"clip {index} is longer than the model's position table: use --window")
        if len(clip.faces) and clip.faces.dtype != FACES_DTYPE:  # float in [0, 1] or [0, 255]? Refused, not guessed
            raise AvemoError(f"clip {index}: faces are {clip.faces.dtype}; the model takes {FACES_DTYPE} pixels 0-255")
        if not np.isfinite(clip.audio).all():
            raise AvemoError(f"clip {index}: audio contain NaN or inf")

    def _result(self, modality: str, probs: np.ndarray, timings: dict[str, float]) -> Recognition:
        named = {name: float(p) for name, p in zip(LABELS, probs, strict=True)}
        labels = [name for name, p in named.items() if p >= self.threshold]
        return Recognition(modality, named, self.backend, labels, timings_ms=timings, notes=list(self.model_notes))


_FIELDS = {AUDIO_FEATS: ("audio", AUDIO_LENGTHS), FACES: ("faces", FACE_LENGTHS)}  # input -> (clip field, lengths)


def batch_shapes(clips: list[ClipInput], modality: str) -> dict[str, tuple[int, ...]]:
    """The shape of each input of ``modality``'s graph holding ``clips`` (padded to the longest)."""
    out: dict[str, tuple[int, ...]] = {}
    for name in GRAPH_INPUTS[modality]:
        if name in _FIELDS:
            field_, lengths = _FIELDS[name]
            parts = [getattr(c, field_) for c in clips]
            out[name] = (len(clips), max(len(p) for p in parts), *parts[0].shape[1:])
            out[lengths] = (len(clips),)
    return out


def fill_batch(arrays: dict[str, np.ndarray], clips: list[ClipInput]) -> None:
    """Write ``clips`` into batch ``arrays`` of at least ``batch_shapes`` (any dtypes): each clip's rows,
    zeros after them, and the lengths; every element written once. uint8 faces into a float array (a model
    exported before uint8 faces) are scaled to [0, 1] on the way."""
    for name, (field_, lengths) in _FIELDS.items():
        if name in arrays:
            for j, clip in enumerate(clips):
                data = getattr(clip, field_)
                write_padded(arrays[name][j], faces_for(data, arrays[name].dtype) if name == FACES else data)
            arrays[lengths][...] = [len(getattr(c, field_)) for c in clips]


def batch_inputs(clips: list[ClipInput], modality: str) -> dict[str, np.ndarray]:
    """Zero-padded batch inputs of the graph for ``modality`` (the clips' dtypes; int64 lengths)."""
    shapes = batch_shapes(clips, modality)
    dtypes = {name: getattr(clips[0], field_).dtype for name, (field_, _) in _FIELDS.items()}
    arrays = {name: np.empty(shape, dtypes.get(name, np.int64)) for name, shape in shapes.items()}
    fill_batch(arrays, clips)
    return arrays
