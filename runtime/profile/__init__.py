"""Latency profiling: timing on a noisy machine, cases, memory, FLOPs, the media pipeline, reports."""
