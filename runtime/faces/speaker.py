"""Which of several faces is speaking: mouth motion against the audio's energy.

Between two sampled frames a speaker's mouth moves while there is speech and
rests in the pauses; a listener's does not follow the audio. For every tracked
face, the change of its mouth region from one sampled frame to the next (the
same region, placed by the later frame's landmarks, cut from both frames, so
landmark jitter is not taken for motion) is correlated (Pearson) with the audio energy (dB) over the same
interval. The face with the highest correlation is chosen when it is clearly
ahead; otherwise (no audio, too few frames, weak or close evidence) the choice
falls back to the largest face in each frame, as a single-face pipeline would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_PAIRS = 6  # consecutive-frame pairs a face needs before its correlation counts (2 s at 3 fps)
#: ... and at least this share of the best-seen face's pairs: the speaker is in view while speech goes on, and a
#: face glimpsed for a few seconds can correlate by chance (0.64 over 10 pairs beside a face seen in 42).
MIN_COVERAGE = 0.5
MIN_CORRELATION = 0.3  # below this the best face is not called the speaker
MIN_LEAD = 0.15  # ... nor when the next face's correlation is this close
ENERGY_FLOOR_DB = 50.0  # energy is floored this far below the loudest interval (silence is all alike)
SILENCE_RMS = 1e-3  # audio quieter than this throughout carries no evidence


@dataclass
class SpeakerChoice:
    track: int | None  # the chosen face's track id; None: the largest face of each frame
    method: str  # "speaker", "only face", "largest", "largest: <why the speaker was not chosen>"
    confidence: float  # speaker: correlation lead over the next face, 0..1; else 0 (1 for "only face")
    scores: dict[int, float] = field(default_factory=dict)  # correlation per track with enough frames


def audio_activity(samples: np.ndarray | None, rate: int, times: list[float], start: float) -> np.ndarray | None:
    """Energy in dB over the interval before each sampled frame ([k] covers times[k-1]..times[k]; [0] is NaN)."""
    if samples is None or len(samples) == 0 or np.sqrt(np.mean(np.square(samples))) < SILENCE_RMS:
        return None
    out = np.full(len(times), np.nan)
    for k in range(1, len(times)):
        a = max(0, round((times[k - 1] - start) * rate))
        b = min(len(samples), round((times[k] - start) * rate))
        if b - a > 0:
            out[k] = 10 * np.log10(np.mean(np.square(samples[a:b], dtype=np.float64)) + 1e-12)
    if np.isnan(out[1:]).all():
        return None
    return np.maximum(out, np.nanmax(out) - ENERGY_FLOOR_DB)


def choose_speaker(motion: dict[int, dict[int, float]], activity: np.ndarray | None) -> SpeakerChoice:
    """``motion[track][frame]`` (mouth change since the previous frame) -> the speaking track, or the
    largest-face fallback and why."""
    if len(motion) == 1:
        return SpeakerChoice(next(iter(motion)), "only face", 1.0)
    if not motion:
        return SpeakerChoice(None, "largest", 0.0)
    if activity is None:
        return SpeakerChoice(None, "largest: no audio to match", 0.0)
    scores = {}
    pairs = {t: [k for k in moves if k < len(activity) and np.isfinite(activity[k])] for t, moves in motion.items()}
    enough = max(MIN_PAIRS, MIN_COVERAGE * max(len(ks) for ks in pairs.values()))
    for track, moves in motion.items():
        ks = pairs[track]
        if len(ks) < enough:
            continue
        m, e = np.array([moves[k] for k in ks]), activity[ks]
        scores[track] = float(np.corrcoef(m, e)[0, 1]) if m.std() > 0 and e.std() > 0 else 0.0
    if not scores:
        return SpeakerChoice(None, "largest: faces seen in too few frames", 0.0, scores)
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    best, score = ranked[0]
    lead = score - max(ranked[1][1], 0.0) if len(ranked) > 1 else score
    if score < MIN_CORRELATION or lead < MIN_LEAD:
        return SpeakerChoice(
            None, f"largest: weak evidence (best correlation {score:.2f}, lead {lead:.2f})", 0.0, scores
        )
    return SpeakerChoice(best, "speaker", float(np.clip(lead, 0.0, 1.0)), scores)
