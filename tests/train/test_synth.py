"""The synthetic benchmarks: where each cues its emotions, and which caches resume."""

import numpy as np
import pytest

from avemo.config import PRESETS
from avemo.contract import LABELS
from avemo.errors import AvemoError
from avemo.train.cache import CacheWriter
from avemo.train.synth import SYNTH_BENCHMARKS, SynthSpec, make_clip, write_synthetic_cache


def _audio_cue_rate(benchmark: str, emotions: list[int], clips: int = 150) -> float:
    """How often a present emotion raises its own log-Mel band: the audio cue rate the benchmark sets.

    A cue lifts the emotion's band over 30-60 % of the clip; the band is compared frame by frame
    with the lowest band, which no emotion uses, and counted as cued when the spread of that
    difference over time (90th minus 10th percentile) exceeds what noise alone gives.
    """
    features = PRESETS["tiny"].features
    spec = SynthSpec(clips=clips, min_seconds=1.0, max_seconds=1.5, benchmark=benchmark)
    band = features.num_mel_bins // (len(LABELS) + 2)
    hits = present = 0
    for seed in range(clips):
        clip = make_clip(seed, "x", spec, features)
        for k in emotions:
            if clip.labels[k] > 0:
                d = clip.fbank[:, band * (k + 1) : band * (k + 2)].mean(1) - clip.fbank[:, :band].mean(1)
                present += 1
                hits += np.quantile(d, 0.9) - np.quantile(d, 0.1) > 1.8
    return hits / present


def test_audio_led_benchmark_cues_emotions_in_the_voice_more_often():
    # happy, surprise and disgust are mostly seen in the mixed benchmark, clearly heard in the audio-led one
    quiet = [LABELS.index(name) for name in ("happy", "surprise", "disgust")]
    assert all(SYNTH_BENCHMARKS["audio-led"][0][k] > SYNTH_BENCHMARKS["mixed"][0][k] for k in quiet)
    assert _audio_cue_rate("audio-led", quiet) > _audio_cue_rate("mixed", quiet) + 0.2


def test_a_cache_resumes_only_with_the_same_benchmark_and_seed(tmp_path):
    features = PRESETS["tiny"].features
    spec = SynthSpec(clips=12, min_seconds=0.6, max_seconds=0.8, benchmark="audio-led")
    write_synthetic_cache(tmp_path, features, spec, seed=0)
    write_synthetic_cache(tmp_path, features, spec, seed=0)  # resuming the same cache is fine
    with pytest.raises(AvemoError, match="benchmark=audio-led"):
        write_synthetic_cache(tmp_path, features, SynthSpec(clips=12, min_seconds=0.6, max_seconds=0.8), seed=0)
    with pytest.raises(AvemoError, match="use a new --out"):
        CacheWriter(tmp_path, features, source="mosei")
    with pytest.raises(AvemoError, match="unknown synthetic benchmark"):
        write_synthetic_cache(tmp_path / "x", features, SynthSpec(clips=4, min_seconds=1, max_seconds=2, benchmark="?"))
