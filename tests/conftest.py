"""Shared fixtures: a tiny synthetic cache and tiny models, all made here, seeded."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from avemo.config import PRESETS
from avemo.runtime.models.manifest import load_manifest
from avemo.train.synth import SynthSpec, write_synthetic_cache

TINY = PRESETS["tiny"]
FAKES = Path(__file__).resolve().parent / "fakes"  # the TensorRT and pycuda TEST DOUBLES
FAULTS = Path(__file__).resolve().parent / "faults"  # on PYTHONPATH: kills at a chosen rename, a full disk


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


#: AVEMO_DOUBLE_GPUS values: a desktop GPU, and two GPUs of different kinds.
DISCRETE = "NVIDIA GeForce RTX 4090:8.9:24576:0"
TWO_GPUS = "NVIDIA GeForce RTX 4090:8.9:24576:0;NVIDIA H100 80GB HBM3:9.0:81920:0"


def assert_close(a, b, atol=1e-5):
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)


@pytest.fixture
def models(colearn_export, tmp_path):
    """A private copy of the exported tiny model (to edit, break or replace)."""
    target = tmp_path / "models"
    shutil.copytree(colearn_export[0], target)
    return target


def edit_manifest(models: Path, change) -> None:
    """Apply ``change`` to the manifest.json of ``models`` as raw JSON (no checks: tests make it hostile)."""
    data = json.loads((models / "manifest.json").read_text())
    change(data)
    (models / "manifest.json").write_text(json.dumps(data))


def double_modules() -> list[str]:
    """The doubles' modules imported so far (their submodules too: each import reads the version afresh)."""
    return [name for name in sys.modules if name.split(".")[0] in ("tensorrt", "pycuda")]


@pytest.fixture
def trt_double(monkeypatch, colearn_export, tmp_path):
    """install(version, gpus) -> (manifest of a fresh copy of the tiny model, tensorrt double, pycuda.driver double)."""
    models = tmp_path / "models"
    shutil.copytree(colearn_export[0], models)

    def install(version: str = "10.3.0", gpus: str | None = None):
        monkeypatch.setenv("AVEMO_DOUBLE_TRT_VERSION", version)
        if gpus:
            monkeypatch.setenv("AVEMO_DOUBLE_GPUS", gpus)
        monkeypatch.syspath_prepend(str(FAKES))
        for name in double_modules():
            monkeypatch.delitem(sys.modules, name, raising=False)
        import avemo.runtime.backends.gpu as gpu
        import avemo.runtime.backends.trt as trt_backend

        monkeypatch.setattr(gpu, "_contexts", {})
        monkeypatch.setattr(gpu, "_closers", weakref.WeakSet())
        monkeypatch.setattr(trt_backend, "_logger", None)
        import pycuda.driver as cuda
        import tensorrt

        return load_manifest(models), tensorrt, cuda

    yield install
    for name in double_modules():  # imported during the test: gone with the doubles
        sys.modules.pop(name, None)


def build_with_double(manifest, precision="fp32", modalities=None, device_id=0):
    """Build ``precision`` engines of ``modalities`` (default: all) through the doubles; their paths."""
    from avemo.runtime.backends.build import build_engine
    from avemo.runtime.backends.trt import current_device

    device = current_device(device_id)
    return [
        build_engine(manifest, m, precision, device, device_id=device_id, log=lambda *_: None)
        for m in modalities or manifest.modalities
    ]


def long_clip_features(features, seconds: float = 35.0):
    """MediaFeatures of a clip of ``seconds`` (fbank frames and face crops at 3 fps with their times), made
    without media: for clips longer than the model's engines take at once."""
    from avemo.runtime.media.extract import MediaFeatures

    rng = np.random.default_rng(8)
    size = features.face_size
    times = [i / features.fps for i in range(int(seconds * features.fps))]
    crops = [rng.integers(0, 255, (size, size, 3), np.uint8) for _ in times]
    fbank = rng.normal(0, 3, (int(seconds * features.frames_per_second), features.num_mel_bins)).astype(np.float32)
    return MediaFeatures(fbank, crops, len(times), [], {}, times)


def kill_leaves_no_orphans(command: list[str], sig: int, workers: int, seconds: float = 10.0) -> None:
    """Start ``command``, wait until it runs ``workers`` spawned processes, kill it with ``sig``: every process
    it started (workers, multiprocessing's resource tracker, theirs) must end within ``seconds``."""
    import os
    import subprocess
    import time

    from avemo.process import descendants, running

    def spawned(pid: int) -> list[int]:
        found = []
        for child in descendants(pid):
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except OSError:
                pass
        return found

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(spawned(process.pid)) < workers:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "its workers never started"
            time.sleep(0.05)
        started = descendants(process.pid)
        os.kill(process.pid, sig)
        process.wait(30)
        deadline = time.monotonic() + seconds
        while (left := [pid for pid in started if running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:  # no litter from a failing test
            os.kill(pid, 9)
        assert not left, f"{len(left)} of {len(started)} processes outlived their parent by {seconds} s"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
