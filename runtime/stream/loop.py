"""`avemo infer --window`'s loop: each source's window results printed as JSON lines as they come, a summary
line per source on stderr, and a timeline plot on request.

The results come from ``results_of(source)`` (the Recognizer's ``stream``, handed in by the CLI): this loop
only reports them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from avemo.errors import AvemoError
from avemo.runtime.batch import json_line, result_line
from avemo.runtime.stream.live import is_live
from avemo.runtime.stream.summary import StreamSummary
from avemo.runtime.stream.timeline import plot_timeline

Echo = Callable[..., Any]  # click.echo: (message, err=False)


def print_windows(
    sources: list[tuple[str, str | None]],
    results_of: Callable[[Path | str], Iterable[Any]],
    window: float,
    stop: threading.Event,
    echo: Echo,
    plot: Path | None = None,
) -> int:
    """Each (name, error) of ``sources`` in turn until ``stop`` is set: its results' lines on stdout, then its
    summary on stderr (and ``plot``'s PNG); an error ends that source with an error line. The number failed."""
    failed = 0
    for name, missing in sources:
        summary = StreamSummary(name)
        kept = _print_source(name, missing, results_of, window, stop, echo, summary, keep=plot is not None)
        failed += summary.error is not None
        summary.stopped = stop.is_set()
        echo(json_line({"summary": summary.to_json()}), err=True)
        if plot and kept:
            target = plot if len(sources) == 1 else plot.with_name(f"{plot.stem}-{Path(name).stem}{plot.suffix}")
            try:
                plot_timeline(kept, target, title=Path(name).name)
            except AvemoError as exc:  # a full disk: said in one line, and the run fails
                echo(f"Error: {exc}", err=True)
                failed += 1
        if stop.is_set():
            break
    return failed


def _print_source(
    name: str,
    missing: str | None,
    results_of: Callable[[Path | str], Iterable[Any]],
    window: float,
    stop: threading.Event,
    echo: Echo,
    summary: StreamSummary,
    keep: bool,
) -> list[Any]:
    """One source's lines (a warning on stderr when windows were dropped); the results kept for the plot."""
    kept: list[Any] = []  # only for --plot: bounded per source
    try:
        if missing:
            raise AvemoError(missing)
        if is_live(name):
            echo(f"{name}: reading (windows of {window:g} s; Ctrl-C stops)", err=True)
        for result in results_of(name if is_live(name) else Path(name)):
            if (result.dropped_windows or 0) > summary.dropped:
                echo(
                    f"WARNING: {name}: processing fell {result.behind_s:g} s behind the stream; "
                    f"{result.dropped_windows - summary.dropped} window(s) skipped",
                    err=True,
                )
            summary.add(result)
            if keep:
                kept.append(result)
            echo(json_line(result_line(result)), nl=True)
    except AvemoError as exc:  # the lines already written stand
        summary.error = str(exc)
        echo(json_line({"source": name, "error": str(exc)}))
    return kept
