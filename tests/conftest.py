"""Shared fixtures: a tiny synthetic cache and tiny models, all made here, seeded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from avemo.config import PRESETS
from avemo.train.synth import SynthSpec, write_synthetic_cache

TINY = PRESETS["tiny"]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-clip synthetic cache (train/valid/test) with the tiny preset's features."""
    root = tmp_path_factory.mktemp("cache")
    write_synthetic_cache(root, TINY.features, SynthSpec(clips=60, min_seconds=0.6, max_seconds=1.6), seed=1)
    return root


@pytest.fixture
def micro_config():
    """Even smaller than `tiny`: fast enough for per-test training."""
    return dataclasses.replace(TINY, audio_layers=1, cnn_width=0.25, dropout=0.0)
