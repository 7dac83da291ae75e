"""What a windowed run over one source did (windows, drops, latencies, how it ended): `avemo infer --window`'s
summary line on stderr."""

from __future__ import annotations

from typing import Any

import numpy as np


class StreamSummary:
    """What a windowed run did, for the summary line on stderr."""

    def __init__(self, source: str) -> None:
        self.source, self.windows, self.dropped, self.end = source, 0, 0, 0.0
        self.latencies: list[float] = []
        self.error: str | None = None
        self.stopped = False

    def add(self, result: Any) -> None:
        """Count one window's result (a Recognition)."""
        self.windows += 1
        self.end = getattr(result, "end", 0.0) or 0.0
        self.dropped = getattr(result, "dropped_windows", 0) or 0
        latency = getattr(result, "latency_ms", None)
        if latency is not None:
            self.latencies.append(latency)

    def to_json(self) -> dict[str, Any]:
        """The summary line's fields: windows, drops, stream seconds, latency p50/p90 and how the run ended."""
        out: dict[str, Any] = {"source": self.source, "windows": self.windows, "dropped_windows": self.dropped}
        out["stream_seconds"] = self.end
        if self.latencies:
            out["latency_ms"] = {
                q: round(float(np.percentile(self.latencies, p)), 1) for q, p in (("p50", 50), ("p90", 90))
            }
        out["ended"] = "error" if self.error else "interrupted" if self.stopped else "end of stream or --max-seconds"
        return out
