"""The multi-seed study of the paper's claims (`avemo study`): train, evaluate, collect, then report.

Each training variant (the two baselines, conventional A+V, co-learning in
each mode) is trained with several seeds until early stopping ends it, every
run is evaluated on one split, and the rows go to ``avemo.train.report`` for
Table 2 and the verdicts. Beside them the study collects two implementation
checks from the runs' files: what early stopping on the mean of the
modalities cost co-learning's A+V (``selection_check``) and the learned
segment vectors (``segment_check``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from avemo.config import TrainConfig, model_config_for_regime
from avemo.contract import BEST_CHECKPOINT, HISTORY_FILE
from avemo.io import atomic_write_json
from avemo.train.cache import preset_for_cache
from avemo.train.evaluate import evaluate_runs
from avemo.train.report import COLEARN_VARIANTS, VARIANTS, aggregate, report_markdown, verdicts
from avemo.train.trainer import train


def selection_check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What early stopping on the mean of A+V, A and V costs co-learning's A+V (validation split).

    Per co-learning run: the A+V validation mF1 at the epoch kept (best mean over the three
    modalities) and at the epoch that is best for A+V alone (how the conventional model is chosen).
    """
    out = []
    for run in dict.fromkeys(r["run"] for r in rows if r["variant"] in COLEARN_VARIANTS):
        row = next(r for r in rows if r["run"] == run)
        path = Path(run) / HISTORY_FILE
        if not path.exists():
            continue
        history = json.loads(path.read_text())
        kept = history[row["training"]["best_epoch"] - 1]["valid_mF1"]["av"]
        best = max(history, key=lambda h: h["valid_mF1"]["av"])
        out.append(
            {
                "run": run,
                "variant": row["variant"],
                "kept_epoch": row["training"]["best_epoch"],
                "kept_av": kept,
                "best_av_epoch": best["epoch"],
                "best_av": best["valid_mF1"]["av"],
            }
        )
    return out


def segment_check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The learned segment vectors (AddAudioSegment / AddVisualSegment) of each A+V run's kept checkpoint:
    their norms and cosine, beside the norm of an encoder output token (LayerNorm: about sqrt(d))."""
    out = []
    for run in dict.fromkeys(r["run"] for r in rows if r["variant"] not in ("audio", "visual")):
        path = Path(run) / BEST_CHECKPOINT
        if not path.exists():
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        audio, visual = state["audio.segment"].float(), state["visual.segment"].float()
        out.append(
            {
                "run": run,
                "variant": next(r["variant"] for r in rows if r["run"] == run),
                "audio_norm": float(audio.norm()),
                "visual_norm": float(visual.norm()),
                "cosine": float(torch.nn.functional.cosine_similarity(audio, visual, dim=0)),
                "token_norm": float(len(audio) ** 0.5),
            }
        )
    return out


def _eta(done: int, total: int, started: float) -> str:
    """', about 12 min left' from the mean time of the runs so far (resumed runs count, so it is rough)."""
    if not done:
        return ""
    left = (time.monotonic() - started) / done * (total - done)
    return f", about {left / 60:.0f} min left" if left >= 60 else f", about {left:.0f} s left"


def run_study(
    benchmarks: dict[str, Path],
    out: Path,
    preset: str,
    base: TrainConfig,
    seeds: list[int],
    variants: list[str],
    split: str = "test",
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train every variant with every seed on every benchmark (resuming finished or cut runs), evaluate
    each run's best checkpoint on ``split``, aggregate and judge the claims. Writes, per benchmark,
    ``OUT/NAME/study.json`` and ``study.md``; returns {name: {"groups", "verdicts", "rows"}}."""
    results = {}
    total, done, started = len(benchmarks) * len(variants) * len(seeds), 0, time.monotonic()
    for name, data in benchmarks.items():
        rows: list[dict[str, Any]] = []
        model_base = preset_for_cache(data, preset)[1]  # the cache's own features (its face detector)
        for variant in variants:
            regime, mode = VARIANTS[variant]
            for seed in seeds:
                run = Path(out) / name / variant / f"seed{seed}"
                eta = _eta(done, total, started)
                print(f"== run {done + 1} of {total}{eta}: {name}: {variant}, seed {seed} -> {run}", flush=True)
                cfg = dataclasses.replace(base, regime=regime, colearn_mode=mode, seed=seed)
                train(data, run, model_config_for_regime(model_base, regime), cfg, progress=progress)
                rows += evaluate_runs([run], data, split)
                done += 1
        groups = aggregate(rows)
        items = verdicts(groups)
        checks, segments = selection_check(rows), segment_check(rows)
        results[name] = {"groups": groups, "verdicts": items, "selection": checks, "segments": segments, "rows": rows}
        (Path(out) / name).mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            Path(out) / name / "study.json", {"benchmark": name, "data": str(data), "split": split, **results[name]}
        )
        (Path(out) / name / "study.md").write_text(report_markdown(name, groups, items, checks, segments))
    return results
