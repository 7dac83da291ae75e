"""Latency profiling: cases (timed with ``avemo.runtime.timing``), memory, FLOPs, the media pipeline, reports."""
