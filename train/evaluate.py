"""Inference over a cache split and the paper's Table-2 report (Markdown + JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avemo.contract import BEST_CHECKPOINT, HISTORY_FILE, LABELS, MODALITY_TITLES
from avemo.errors import AvemoError
from avemo.train.cache import CacheSplit
from avemo.train.checkpoint import load_model, train_config_of
from avemo.train.data import make_loader
from avemo.train.distributed import Dist
from avemo.train.metrics import emotion_f1
from avemo.train.model import CrossModalTransformer
from avemo.train.report import variant_of


@torch.no_grad()
def predict(
    model: CrossModalTransformer, split: CacheSplit, modality: str, batch_size: int = 32, ctx: Dist | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [N, 6] for the clips that have ``modality``, and their indices in the split.

    Under data parallelism (``ctx``) each rank predicts its share and every rank gets all of it.
    """
    ctx = ctx or Dist()
    was_training = model.training
    model.eval()
    probs, indices = [np.zeros((0, len(LABELS)), np.float32)], [np.zeros(0, np.int64)]
    need = {"need_audio": "a" in modality, "need_faces": "v" in modality}
    for batch in make_loader(split, batch_size, shard=(ctx.rank, ctx.world), **need):
        keep = batch.usable(modality)
        if keep.any():
            p = torch.sigmoid(model(**batch.to(ctx.device).inputs(modality))).cpu()
            probs.append(p[keep].numpy())
            indices.append(batch.indices[keep].numpy())
    model.train(was_training)
    parts = ctx.gather((np.concatenate(probs), np.concatenate(indices)))
    idx = np.concatenate([i for _, i in parts])
    if not len(idx):
        raise AvemoError(f"{split.root}/{split.split}: no clip has the {MODALITY_TITLES[modality]} modality")
    order = np.argsort(idx)
    return np.concatenate([p for p, _ in parts])[order], idx[order]


def evaluate_model(
    model: CrossModalTransformer, split: CacheSplit, modalities: tuple[str, ...], ctx: Dist | None = None
) -> dict[str, Any]:
    """Table-2 metrics for each modality: {modality: {emotion: {wF1, mF1}, average: ...}}."""
    out = {}
    for modality in modalities:
        probs, idx = predict(model, split, modality, ctx=ctx)
        out[modality] = emotion_f1(split.labels[idx], probs)
        out[modality]["clips"] = len(idx)
    return out


def evaluate_runs(runs: list[Path], data: Path | None, split_name: str, progress: bool = False) -> list[dict[str, Any]]:
    """Evaluate each run's best checkpoint on one split; a row per (run, modality). ``progress``: a bar
    over runs x modalities on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=len(runs), desc=f"eval {split_name}", unit="run", disable=not progress, leave=False)
    try:
        return _evaluate_runs(runs, data, split_name, bar)
    finally:
        bar.close()


def _evaluate_runs(runs: list[Path], data: Path | None, split_name: str, bar: Any) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        ckpt = Path(run) / BEST_CHECKPOINT if Path(run).is_dir() else Path(run)
        model, payload = load_model(ckpt)
        cache = Path(data) if data else Path(payload["data"]) if payload.get("data") else None
        if cache is None or not cache.exists():
            raise AvemoError(
                f"{ckpt}: training cache {cache or '(not recorded)'} not found; pass --data CACHE (a run "
                "trained by an older avemo recorded it relative to where training ran)"
            )
        split = CacheSplit(cache, split_name, model.cfg.features)
        results = {}
        for modality in model.cfg.modalities:
            bar.set_postfix_str(f"{run} {MODALITY_TITLES[modality]}")
            results |= evaluate_model(model, split, (modality,))
        bar.update()
        tcfg = train_config_of(payload, str(ckpt))
        # The best checkpoint's history stops at the best epoch; history.json holds the whole run.
        history_file = ckpt.parent / HISTORY_FILE
        history = json.loads(history_file.read_text()) if history_file.exists() else payload.get("history", [])
        training = {
            "seed": tcfg.seed,
            "colearn_mode": tcfg.colearn_mode,
            "epochs": len(history),
            "best_epoch": payload.get("best_epoch"),
            # early stopping ended the run: `patience` epochs without a better one after the best (else it ran
            # out of --epochs and may not have converged; the best checkpoint's own epoch budget may be older)
            "stopped_early": len(history) - (payload.get("best_epoch") or 0) >= tcfg.patience,
            "clips_per_second": float(np.median([h["clips_per_second"] for h in history])) if history else None,
        }
        for modality, metrics in results.items():
            rows.append(
                {
                    "run": str(run),
                    "data": str(cache),
                    "regime": tcfg.regime,
                    "variant": variant_of(tcfg.regime, tcfg.colearn_mode),
                    "inference": modality,
                    "metrics": metrics,
                    "training": training,
                }
            )
    return rows
