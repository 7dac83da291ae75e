"""What every live reader shares: a thread puts what it reads on a queue, the consumer takes it from there.

A reader thread (``live.LiveSource``, ``devices.CameraSource``, ``devices.MergedSource``) puts events,
or the exception that ended it, then ``END``; ``queued`` yields them to the consumer, with the stall
timeout and the stop event (Ctrl-C) checked while it waits; ``stop_reader`` ends the thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from avemo.errors import AvemoError

END = object()  # what a reader thread puts on its queue when its source ends
POLL = 0.2  # seconds between looks at the stop event while waiting (Ctrl-C ends a wait within this)


def queued(
    items: queue.Queue[Any], timeout: float, name: str, ends: int = 1, stop: threading.Event | None = None
) -> Iterator[Any]:
    """What reader threads put on ``items``, until ``ends`` of them have put END or ``stop`` is set. Nothing
    for ``timeout`` seconds is a stalled source; an exception a reader put is raised here, naming ``name``."""
    while ends:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = items.get(timeout=max(0.0, min(POLL, deadline - time.monotonic())))
                break
            except queue.Empty:
                if stop is not None and stop.is_set():
                    return
                if time.monotonic() >= deadline:
                    raise AvemoError(f"{name}: no data for {timeout:g} s (stalled stream)") from None
        if item is END:
            ends -= 1
        elif isinstance(item, AvemoError):
            raise item
        elif isinstance(item, Exception):
            raise AvemoError(f"{name}: the stream broke ({item})")
        else:
            yield item


def stop_reader(stop: threading.Event, items: queue.Queue[Any], thread: threading.Thread, timeout: float) -> bool:
    """Ask a reader thread to stop, unblock it if it waits on a full queue; True once it has ended."""
    stop.set()
    while not items.empty():
        items.get_nowait()
    thread.join(timeout=timeout)
    return not thread.is_alive()
