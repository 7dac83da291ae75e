"""Checkpoints: model weights plus the configs that built them (nanoGPT style), written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from avemo import __version__
from avemo.config import ModelConfig, TrainConfig, from_dict, to_dict
from avemo.errors import AvemoError
from avemo.io import atomic_write_bytes
from avemo.train.model import CrossModalTransformer

CHECKPOINT_FORMAT = "avemo-checkpoint"


def save_checkpoint(path: Path, model: CrossModalTransformer, train_cfg: TrainConfig, **state: Any) -> None:
    """Write a checkpoint through a temporary file: a crash never leaves half a checkpoint."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "avemo_version": __version__,
        "model_config": to_dict(model.cfg),
        "train_config": to_dict(train_cfg),
        "model": model.state_dict(),
        **state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict; one-line errors for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise AvemoError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a damaged file
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise AvemoError(f"{path}: corrupt or unreadable checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise AvemoError(f"{path}: not an avemo checkpoint")
    return payload


def load_model(path: Path) -> tuple[CrossModalTransformer, dict[str, Any]]:
    """Rebuild the model from the config inside the checkpoint, in eval mode."""
    payload = read_checkpoint(path)
    cfg = from_dict(ModelConfig, payload["model_config"], source=str(path))
    model = CrossModalTransformer(cfg)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise AvemoError(f"{path}: weights do not match the saved config ({str(exc).splitlines()[0]})") from None
    return model.eval(), payload


def train_config_of(payload: dict[str, Any], source: str) -> TrainConfig:
    return from_dict(TrainConfig, payload["train_config"], source=source)
