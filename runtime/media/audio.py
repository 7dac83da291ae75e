"""Audio features: 80 log-Mel filterbanks + delta + delta-delta = 240 dims.

Filterbanks come from kaldi-native-fbank (Kaldi-compatible, no torch); deltas
use Kaldi's ``add-deltas`` formula, written here in NumPy.
"""

from __future__ import annotations

import functools

import numpy as np

from avemo.config import FeatureConfig
from avemo.deps import require
from avemo.errors import AvemoError


@functools.lru_cache(maxsize=8)
def _delta_filters(window: int, order: int = 2) -> tuple[np.ndarray, ...]:
    """Kaldi's DeltaFeatures scales: order k is order k-1 convolved with the delta window."""
    scales = [np.ones(1)]
    taps = np.arange(-window, window + 1, dtype=np.float64)
    normaliser = float(np.sum(taps**2))
    for _ in range(order):
        scales.append(np.convolve(scales[-1], taps) / normaliser)
    return tuple(scales)


def add_deltas(feats: np.ndarray, window: int = 2) -> np.ndarray:
    """[T, D] -> [T, 3D]: features, deltas and delta-deltas (edge frames replicated)."""
    if feats.ndim != 2:
        raise ValueError(f"add_deltas expects [frames, dims], got shape {feats.shape}")
    frames = feats.shape[0]
    out = [feats.astype(np.float32)]
    for scales in _delta_filters(window)[1:]:
        half = (len(scales) - 1) // 2
        idx = np.clip(np.arange(frames)[:, None] + np.arange(-half, half + 1)[None, :], 0, frames - 1)
        out.append(np.einsum("tjd,j->td", feats[idx].astype(np.float64), scales).astype(np.float32))
    return np.concatenate(out, axis=1)


class OnlineFbank:
    """Filterbank frames of audio that arrives in pieces: ``accept`` samples, ``frames`` as they are ready.

    Frame ``i`` is centred on sample ``i * shift + shift / 2`` of the stream (``snip_edges=False``:
    one frame per shift); the first and, after ``finish``, the last frames see mirrored samples.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        knf = require("kaldi_native_fbank", "pip install 'avemo[runtime]'")
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = float(cfg.sample_rate)
        opts.frame_opts.frame_length_ms = cfg.frame_length_ms
        opts.frame_opts.frame_shift_ms = cfg.frame_shift_ms
        opts.frame_opts.dither = 0.0  # deterministic features: training and serving agree bit for bit
        opts.frame_opts.snip_edges = False  # one frame per shift, centred, as most recipes today
        opts.mel_opts.num_bins = cfg.num_mel_bins
        self._computer = knf.OnlineFbank(opts)
        self._rate, self._bins = float(cfg.sample_rate), cfg.num_mel_bins
        self.taken = 0  # frames handed out so far

    def accept(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, np.float32)
        if not np.isfinite(samples).all():  # a float wav can hold them; Kaldi would fail on "mel energy is nan"
            raise AvemoError("the audio has non-finite samples (NaN or Inf): not recognised")
        # Kaldi's conventions assume 16-bit sample values. An array, not a list: 4 bytes a sample, not 32+.
        self._computer.accept_waveform(self._rate, samples * 32768.0)

    def finish(self) -> None:
        self._computer.input_finished()

    def frames(self) -> np.ndarray:
        """The frames that became ready since the last call, [n, bins]."""
        ready = self._computer.num_frames_ready
        # get_frame returns views into kaldi-native-fbank's storage: copy them out before popping.
        out = np.array([self._computer.get_frame(i) for i in range(self.taken, ready)], np.float32)
        self._computer.pop(ready - self.taken)  # it keeps every frame otherwise (32 KB/s, 115 MB an hour)
        self.taken = ready
        return out.reshape(-1, self._bins)


def frame_count(num_samples: int, cfg: FeatureConfig) -> int:
    """Frames Kaldi makes of ``num_samples`` with ``snip_edges=False``: one per shift, rounded."""
    shift = round(cfg.sample_rate * cfg.frame_shift_ms / 1000)
    return (num_samples + shift // 2) // shift


def fbank(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Log-Mel filterbanks [T, num_mel_bins] of mono float samples in [-1, 1] at cfg.sample_rate."""
    computer = OnlineFbank(cfg)
    computer.accept(samples)
    computer.finish()
    return computer.frames()
