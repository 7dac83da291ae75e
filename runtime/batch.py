"""`avemo infer` over many files: folders, globs and @lists in; a results file written as each file ends,
resumed on a rerun; files in parallel threads sharing one Recognizer; a progress bar on a terminal."""

from __future__ import annotations

import csv
import glob
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from avemo.contract import LABELS, MEDIA_SUFFIXES
from avemo.errors import AvemoError

DECIMALS = 4  # probabilities as printed: more digits than any model here resolves


def expand_media(items: tuple[str, ...] | list[str], is_live: Callable[[str], bool]) -> list[tuple[str, str | None]]:
    """(source, error) for each file named: a folder's media files (recursively, sorted), a glob's matches,
    ``@list.txt``'s lines (blank and ``#`` lines skipped); live sources as given. ``error`` is set for a name
    that gives no file, so it gets its own error line while the others run."""
    out: list[tuple[str, str | None]] = []
    for item in items:
        try:
            out += _expand_one(item, is_live)
        except OSError as exc:  # a name over 255 bytes, an unreadable folder or list: that name's error line
            out.append((item, exc.strerror or str(exc)))
    return out


def _expand_one(item: str, is_live: Callable[[str], bool]) -> list[tuple[str, str | None]]:
    if is_live(item):
        return [(item, None)]
    if item.startswith("@") and not Path(item).exists():
        listed = Path(item[1:])
        if not listed.is_file():
            return [(item, f"list file {listed} not found")]
        lines = [line.strip() for line in listed.read_text().splitlines()]
        return expand_media([line for line in lines if line and not line.startswith("#")], is_live)
    if Path(item).is_dir():
        found = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())
        return [(str(p), None) for p in found] or [(item, f"no media files in folder ({', '.join(MEDIA_SUFFIXES)})")]
    if glob.has_magic(item) and not Path(item).exists():
        matches = sorted(glob.glob(item, recursive=True))
        return [(m, None) for m in matches] or [(item, "no file matches this pattern")]
    return [(item, None)]


def result_line(result: Any) -> dict[str, Any]:
    """A Recognition as `avemo infer` writes it: probabilities rounded, the dominant emotion beside the
    thresholded labels, and the real-time factor (processing time / media seconds)."""
    line = result.to_json()
    line["probs"] = {k: round(v, DECIMALS) for k, v in result.probs.items()}
    emotion = max(result.probs, key=result.probs.__getitem__)
    line = _after(
        line, "labels", "dominant", {"emotion": emotion, "probability": round(result.probs[emotion], DECIMALS)}
    )
    if result.seconds:
        line["rtf"] = round(
            sum(result.timings_ms.get(k, 0.0) for k in ("features", "inference")) / 1000 / result.seconds, 4
        )
    return line


def json_line(obj: object) -> str:
    """JSON of ``obj`` with file names that are not UTF-8 shown as \\xNN escapes, not lone surrogates
    (which strict JSON readers refuse)."""

    def clean(value: object) -> object:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        return [clean(v) for v in value] if isinstance(value, list) else value

    return json.dumps(clean(obj))


def _after(line: dict[str, Any], key: str, new: str, value: Any) -> dict[str, Any]:
    items = list(line.items())
    at = [k for k, _ in items].index(key) + 1
    return dict([*items[:at], (new, value), *items[at:]])


CSV_FIELDS = (
    "source",
    "modality",
    "labels",
    "dominant",
    "dominant_probability",
    *LABELS,
    "rtf",
    "backend",
    "notes",
    "error",
)


class ResultsFile:
    """``--out results.jsonl|.csv``: one line per file, flushed as each ends. On a rerun the files that already
    have a line are skipped (results and errors alike; with ``retry_errors`` the errors are redone, their
    new line appended: a reader takes the last line of a source)."""

    def __init__(self, path: Path, retry_errors: bool = False) -> None:
        if path.suffix.lower() not in (".jsonl", ".csv"):
            raise AvemoError(f"{path}: --out takes a .jsonl or .csv file")
        self.path, self.csv = path, path.suffix.lower() == ".csv"
        self.done: dict[str, bool] = {}  # source -> it ended in an error
        self._lock = threading.Lock()
        if path.exists():
            for source, error in self._read():
                self.done[source] = error
        self.retry_errors = retry_errors
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="" if self.csv else None)
        if not fresh and not self.csv and not path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # a line cut by a crash stays alone on its line (and is ignored)
        self._writer = csv.DictWriter(self._file, CSV_FIELDS, extrasaction="ignore") if self.csv else None
        if self._writer is not None and fresh:
            self._writer.writeheader()

    def _read(self) -> Iterator[tuple[str, bool]]:
        with self.path.open(newline="") as f:
            if self.csv:
                for row in csv.DictReader(f):
                    if row.get("source"):
                        yield row["source"], bool(row.get("error"))
                return
            for text in f:
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:  # the last line of a run that was killed mid-write
                    continue
                if isinstance(line, dict) and "source" in line:
                    yield line["source"], "error" in line

    def skip(self, source: str) -> bool:
        return source in self.done and not (self.retry_errors and self.done[source])

    def write(self, line: dict[str, Any]) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.writerow(_csv_row(line))
            else:
                self._file.write(json.dumps(line) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def _csv_row(line: dict[str, Any]) -> dict[str, Any]:
    dominant = line.get("dominant") or {}
    row = {**line, **line.get("probs", {}), "labels": ";".join(line.get("labels", []))}
    row |= {"dominant": dominant.get("emotion", ""), "dominant_probability": dominant.get("probability", "")}
    return row | {"notes": " | ".join(line.get("notes", []))}


def recognize_files(
    recognizer: Any,
    sources: list[tuple[str, str | None]],
    emit: Callable[[dict[str, Any]], None],
    workers: int = 1,
    stop: threading.Event | None = None,
    progress: bool | None = None,
) -> int:
    """Recognise whole files, ``workers`` at a time (one shared Recognizer: decoding, faces and ONNX Runtime
    run in parallel threads); ``emit`` each line as its file ends. Returns the number of error lines.
    ``progress`` None: a bar (files/s, ETA) on stderr only when it is a terminal."""
    from tqdm import tqdm

    def one(source: str, error: str | None) -> dict[str, Any] | None:
        if stop is not None and stop.is_set():
            return None  # not started before Ctrl-C: no line, so a rerun does it
        if error is None:
            try:
                return result_line(recognizer.recognize(Path(source)))
            except AvemoError as exc:
                error = str(exc)
        return {"source": source, "error": error}

    failed = 0
    with tqdm(total=len(sources), unit="file", disable=None if progress is None else not progress) as bar:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(one, s, e) for s, e in sources]
            for future in as_completed(futures):
                line = future.result()
                if line is None:
                    continue
                failed += "error" in line
                emit(line)
                bar.update()
    return failed
