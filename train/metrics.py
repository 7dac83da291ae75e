"""Table-2 metrics: per-emotion weighted and macro F1 at threshold 0.5 (scikit-learn)."""

from __future__ import annotations

import numpy as np

from avemo.contract import LABELS

THRESHOLD = 0.5


def emotion_f1(labels: np.ndarray, probs: np.ndarray, threshold: float = THRESHOLD) -> dict[str, dict[str, float]]:
    """Per emotion wF1 / mF1 of binary predictions, plus their mean over emotions ("average").

    Each value is exactly ``sklearn.metrics.f1_score(y_true, y_pred, average=...)``
    on that emotion's column.
    """
    from sklearn.metrics import f1_score

    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != len(LABELS):
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must both be [N, {len(LABELS)}]")
    y_true = labels > 0.5
    y_pred = probs >= threshold
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(LABELS):
        out[name] = {
            avg[0] + "F1": float(f1_score(y_true[:, k], y_pred[:, k], average=avg, zero_division=0.0))
            for avg in ("weighted", "macro")
        }
    out["average"] = {key: float(np.mean([out[n][key] for n in LABELS])) for key in ("wF1", "mF1")}
    return out
