"""Configuration dataclasses, saved inside every checkpoint, cache and manifest.

Torch-free so that the runtime can read a model's configuration from its
manifest. ``CONFIG_VERSION`` guards against files written by a newer avemo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from avemo.contract import DEFAULT_FACE_DETECTOR, FACE_DETECTORS
from avemo.errors import AvemoError

CONFIG_VERSION = 1
# What made the crops of a cache or model written before these fields existed.
LEGACY_FEATURES: dict[str, Any] = {
    "face_detector": "haar",
    "face_detector_sha256": "",
    "face_detect_side": 480,
    "frame_sampler": 1,
}


@dataclass(frozen=True)
class FeatureConfig:
    """How audio features and face crops are made (paper 4.2)."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    delta_window: int = 2  # Kaldi's add-deltas window: 80 -> 240 dims
    fps: float = 3.0
    face_size: int = 128
    face_margin: float = FACE_DETECTORS[DEFAULT_FACE_DETECTOR]["margin"]  # around the detected box, per side
    jpeg_quality: int = 90  # face crops are stored compressed in the cache
    # The face detector is part of the model: crops made by another detector are another input.
    face_detector: str = DEFAULT_FACE_DETECTOR  # yunet | haar | a YuNet ONNX path (see contract.FACE_DETECTORS)
    face_detector_sha256: str = FACE_DETECTORS[DEFAULT_FACE_DETECTOR]["sha256"]
    face_detect_side: int = FACE_DETECTORS[DEFAULT_FACE_DETECTOR]["detect_side"]  # longer side searched
    # 2: one frame per tick (whether unneeded B-frames are decoded does not change which: runtime/media/decode.py);
    # 1 (before avemo 0.2): up to ~40 % extra frames on most MP4s
    frame_sampler: int = 2

    @property
    def audio_dim(self) -> int:
        return 3 * self.num_mel_bins

    @property
    def frames_per_second(self) -> float:
        return 1000.0 / self.frame_shift_ms


@dataclass(frozen=True)
class ModelConfig:
    """The cross-modal transformer (paper 3.1, 4.2).

    ``use_audio`` / ``use_visual`` say which encoders exist; ``cross_layers=0``
    is a single-modality baseline with no cross-modal encoder.
    """

    d_model: int = 128
    ffn_dim: int = 512
    num_heads: int = 4
    dropout: float = 0.1
    audio_layers: int = 6
    visual_layers: int = 2
    cross_layers: int = 2
    audio_conv_channels: int = 128
    cnn: str = "mobilenet_v3_small"  # or mobilenet_v3_large (train/mobilenet.py)
    cnn_width: float = 1.0
    classifier_dim: int = 128
    use_audio: bool = True
    use_visual: bool = True
    features: FeatureConfig = field(default_factory=FeatureConfig)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Inference modalities this model supports, in contract order."""
        if self.use_audio and self.use_visual:
            return ("a", "v", "av")
        return ("a",) if self.use_audio else ("v",)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (paper 4.2: RAdam, batch 16, early stopping)."""

    regime: str = "colearn"  # audio | visual | conventional | colearn
    colearn_mode: str = "random"  # random (Eq. 20 per mini-batch) | summed
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.0
    max_epochs: int = 50
    patience: int = 5
    min_epochs: int = 0  # no early stop before this: small models can sit on a plateau first
    seed: int = 0
    grad_clip: float = 5.0
    # Batches are padded to one of this many lengths (train/data.py: LengthBuckets), so a GPU meets few input shapes.
    length_buckets: int = 8


REGIMES: tuple[str, ...] = ("audio", "visual", "conventional", "colearn")
# `avemo train --precision` (avemo.train.speed): autocast dtype of the training steps.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

PRESETS: dict[str, ModelConfig] = {
    # The paper's sizes: d=128, FFN 512, 4 heads, 6 audio / 2 visual / 2 cross blocks.
    "paper": ModelConfig(),
    # Small enough to train four regimes in minutes on a 2-core CPU.
    "tiny": ModelConfig(
        d_model=48,
        ffn_dim=96,
        num_heads=2,
        audio_layers=2,
        visual_layers=1,
        cross_layers=1,
        audio_conv_channels=48,
        cnn_width=0.25,
        classifier_dim=48,
        features=FeatureConfig(face_size=48),
    ),
}

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    "tiny": TrainConfig(lr=3e-3, max_epochs=10, patience=4, min_epochs=8),
}


def model_config_for_regime(base: ModelConfig, regime: str) -> ModelConfig:
    """The model a regime trains: baselines keep one encoder and no cross-modal encoder."""
    if regime not in REGIMES:
        raise AvemoError(f"unknown regime {regime!r}; expected one of {', '.join(REGIMES)}")
    if regime == "audio":
        return dataclasses.replace(base, use_visual=False, cross_layers=0)
    if regime == "visual":
        return dataclasses.replace(base, use_audio=False, cross_layers=0)
    return dataclasses.replace(base, use_audio=True, use_visual=True)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass, stamped with ``CONFIG_VERSION``."""
    return {"config_version": CONFIG_VERSION, **dataclasses.asdict(config)}


def _from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise AvemoError(f"{source}: unknown {cls.__name__} fields {unknown}")
    if cls is FeatureConfig:
        data = {**LEGACY_FEATURES, **data}
    kwargs = {}
    for name, value in data.items():
        if name == "features" and cls is ModelConfig:
            value = _from_dict(FeatureConfig, value, source)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(cls: type, data: dict[str, Any], source: str = "config") -> Any:
    """Rebuild a config dataclass; refuse one written by a newer avemo."""
    data = dict(data)
    version = data.pop("config_version", CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise AvemoError(
            f"{source}: config version {version} is newer than this avemo supports ({CONFIG_VERSION}); upgrade avemo"
        )
    return _from_dict(cls, data, source)
