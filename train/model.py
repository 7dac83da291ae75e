"""The cross-modal transformer of Takashima et al. (Interspeech 2022), section 3.1.

    audio  [B, Ta, 240] -> ConvolutionPooling (T/4) -> AddPosition -> 6 blocks -> AddAudioSegment
    faces  [B, Tv, 3, S, S] -> MobileNetV3 -> Linear(128) -> AddPosition -> 2 blocks -> AddVisualSegment
    Z0 = Concat(A, V) on time | A | V  -> cross-modal encoder (2 blocks)
    -> masked attentive pooling -> FC + Swish -> FC -> sigmoid over 6 emotions

Design choices (the paper leaves them open):
- Pre-norm blocks (LayerNorm before attention and FFN, one final LayerNorm per
  encoder): stable without warm-up on small data.
- Attention is written with plain matmul/softmax and an additive finite mask,
  so ONNX export keeps batch and time dynamic and a clip with no valid key
  yields a uniform average instead of NaN.
- Every padded position is zeroed before each convolution and filled with a
  large negative value before each max-pool, so a padded batch gives the same
  output as each clip alone.
- Lengths and masks are boolean or integer arithmetic only (the pooled mask is
  a slice of the input mask), so no graph precision can round them.
- Input normalisation (audio CMVN, pixel mean/std) lives inside the model and
  so inside every exported graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avemo.config import ModelConfig
from avemo.contract import MAX_POSITIONS, NUM_LABELS
from avemo.train.mobilenet import mobilenet_v3_features

NEG = -1e4  # additive mask value: finite, representable in fp16


def length_mask(lengths: Tensor, max_len: int | Tensor) -> Tensor:
    """[B] lengths -> [B, T] bool, True at valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def pooled_mask(mask: Tensor) -> Tensor:
    """The valid mask after a stride-2, ceil-mode pool: position j is valid iff input 2j is (j < ceil(L/2)).

    A slice, not arithmetic on lengths: the exporter writes integer division as float Div/Floor/Cast,
    which an fp16 graph rounds wrong above 2048 frames (DESIGN.md, "Rules the code keeps").
    """
    return mask[:, ::2]


def sinusoid_table(dim: int, length: int = MAX_POSITIONS) -> Tensor:
    """Sinusoidal position vectors [length, dim].

    A precomputed table sliced per input (not sin/cos of positions at run
    time): values stay in [-1, 1], so an FP16 graph keeps them exact enough,
    while fp16 arithmetic on positions in the thousands would not.
    """
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    angles = pos * freq[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim].float()


class AddPosition(nn.Module):
    """Eq. 5 / 9: content scaled by sqrt(d) (as ESPnet and WeNet do) plus sinusoidal positions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        self.register_buffer("table", sinusoid_table(dim), persistent=False)  # rebuilt, not checkpointed

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.table[: x.shape[1]]


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x [B, T, d]; bias [B, 1, 1, T] additive key mask."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(d // self.heads)) + bias
        weights = self.drop(scores.softmax(dim=-1))
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: MHSA and a Swish FFN (d -> ffn -> d)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ffn_dim),
            nn.SiLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_dim, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), bias))
        return x + self.drop(self.ffn(self.norm2(x)))


class Encoder(nn.Module):
    """TransformerEnc(): a stack of blocks and a final LayerNorm; padded outputs zeroed."""

    def __init__(self, cfg: ModelConfig, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        bias = torch.zeros_like(mask, dtype=x.dtype).masked_fill(~mask, NEG)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x).masked_fill(~mask[..., None], 0.0)


class AudioEncoder(nn.Module):
    """Eq. 4-7: ConvolutionPooling, AddPosition, TransformerEnc, AddAudioSegment."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.features.audio_dim
        # CMVN: set from training data statistics before training (see set_cmvn).
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))
        c = cfg.audio_conv_channels
        self.convs = nn.ModuleList([nn.Conv1d(dim, c, 3, padding=1), nn.Conv1d(c, c, 3, padding=1)])
        self.proj = nn.Linear(c, cfg.d_model)
        self.position = AddPosition(cfg.d_model)
        self.encoder = Encoder(cfg, cfg.audio_layers)
        self.segment = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """[B, T, 240], [B] -> [B, ceil(T/4), d], valid mask."""
        mask = length_mask(lengths, feats.shape[1])
        x = ((feats - self.feat_mean) / self.feat_std).transpose(1, 2)  # [B, C, T]
        for conv in self.convs:
            x = F.silu(conv(x.masked_fill(~mask[:, None, :], 0.0)))
            # max_pool2d on [B, C, T, 1]: max_pool1d freezes the time axis in torch.export.
            x = x.masked_fill(~mask[:, None, :], NEG)
            x = F.max_pool2d(x[..., None], (2, 1), (2, 1), ceil_mode=True)[..., 0]
            mask = pooled_mask(mask)
            x = x.masked_fill(~mask[:, None, :], 0.0)
        x = self.position(self.proj(x.transpose(1, 2)))
        return self.encoder(x, mask) + self.segment, mask


class VisualEncoder(nn.Module):
    """Eq. 8-11: CNN (MobileNetV3), projection, AddPosition, TransformerEnc, AddVisualSegment."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.cnn = mobilenet_v3_features(cfg.cnn, cfg.cnn_width)
        with torch.no_grad():
            s = cfg.features.face_size
            channels = self.cnn(torch.zeros(1, 3, s, s)).shape[1]
        self.proj = nn.Linear(channels, cfg.d_model)
        self.position = AddPosition(cfg.d_model)
        self.encoder = Encoder(cfg, cfg.visual_layers)
        self.segment = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, faces: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """[B, Tv, 3, S, S] in [0, 1], [B] -> [B, Tv, d], valid mask."""
        b, t = faces.shape[:2]
        mask = length_mask(lengths, t)
        frames = (faces.flatten(0, 1) - self.pixel_mean) / self.pixel_std
        if self.training:
            # Every frame goes through the CNN, so its input shape is the batch's padded shape (a GPU meets few);
            # BatchNorm takes its statistics from the real frames only, so padding cannot shift them.
            flat = mask.flatten()
            feats = self.cnn(frames, flat).mean(dim=(2, 3)).masked_fill(~flat[:, None], 0.0)
        else:
            feats = self.cnn(frames).mean(dim=(2, 3))
        x = self.position(self.proj(feats.view(b, t, -1)))
        return self.encoder(x, mask) + self.segment, mask


class AttentivePooling(nn.Module):
    """Eq. 14: masked attention-weighted sum over time."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        scores = self.score(x)[..., 0].masked_fill(~mask, NEG)
        return (scores.softmax(dim=-1)[..., None] * x).sum(dim=1)


class CrossModalTransformer(nn.Module):
    """One model for A, V and A+V inference (Eq. 12). Returns logits [B, 6]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio = AudioEncoder(cfg) if cfg.use_audio else None
        self.visual = VisualEncoder(cfg) if cfg.use_visual else None
        self.cross = Encoder(cfg, cfg.cross_layers) if cfg.cross_layers > 0 else None
        self.pool = AttentivePooling(cfg.d_model)
        self.hidden = nn.Linear(cfg.d_model, cfg.classifier_dim)
        self.head = nn.Linear(cfg.classifier_dim, NUM_LABELS)

    def forward(
        self,
        audio: Tensor | None = None,
        audio_lengths: Tensor | None = None,
        faces: Tensor | None = None,
        face_lengths: Tensor | None = None,
    ) -> Tensor:
        parts, masks = [], []
        for name, encoder, x, lengths in (
            ("audio", self.audio, audio, audio_lengths),
            ("visual", self.visual, faces, face_lengths),
        ):
            if x is None:
                continue
            if encoder is None:
                raise ValueError(f"this model has no {name} encoder")
            encoded, mask = encoder(x, lengths)
            parts.append(encoded)
            masks.append(mask)
        if not parts:
            raise ValueError("no input modality given")
        z, mask = torch.cat(parts, dim=1), torch.cat(masks, dim=1)  # Concat on the time axis
        if self.cross is not None:
            z = self.cross(z, mask)
        return self.head(F.silu(self.hidden(self.pool(z, mask))))

    def set_cmvn(self, mean: Tensor, std: Tensor) -> None:
        """Audio normalisation statistics (from training data), stored in the model."""
        if self.audio is not None:
            self.audio.feat_mean.copy_(mean)
            self.audio.feat_std.copy_(std.clamp_min(1e-3))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
