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


def make_checkpoint(path: Path, config, regime: str, seed: int = 0):
    """An untrained model of ``regime`` saved as a checkpoint (export and runtime tests need no training)."""
    import torch

    from avemo.config import TrainConfig, model_config_for_regime
    from avemo.train.checkpoint import save_checkpoint
    from avemo.train.model import CrossModalTransformer

    torch.manual_seed(seed)
    model = CrossModalTransformer(model_config_for_regime(config, regime)).eval()
    save_checkpoint(path, model, TrainConfig(regime=regime), valid={"av": {"average": {"mF1": 0.5}}})
    return path, model


@pytest.fixture(scope="session")
def colearn_export(tmp_path_factory):
    """A tiny co-learning model exported with fp32 + fp16 graphs: (models dir, manifest, torch model)."""
    from avemo.export.exporter import export_run

    micro = dataclasses.replace(TINY, audio_layers=1, dropout=0.0)
    root = tmp_path_factory.mktemp("export")
    ckpt, model = make_checkpoint(root / "colearn.pt", micro, "colearn")
    manifest = export_run(ckpt, root / "models", ("fp16",), log=lambda *_: None)
    return root / "models", manifest, model
