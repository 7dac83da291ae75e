"""Training regimes (paper 3.2, 4.2): baselines, conventional A+V (Eq. 3), interactive co-learning (Eq. 20)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avemo.config import ModelConfig, TrainConfig, from_dict, to_dict
from avemo.contract import BEST_CHECKPOINT, CURVES_FILE, HISTORY_FILE, LAST_CHECKPOINT
from avemo.errors import AvemoError
from avemo.io import atomic_write_json
from avemo.train.cache import CacheSplit
from avemo.train.checkpoint import read_checkpoint, save_checkpoint
from avemo.train.data import Batch, make_loader
from avemo.train.distributed import Dist, init_from_env, shutdown
from avemo.train.evaluate import evaluate_model
from avemo.train.model import CrossModalTransformer, count_parameters
from avemo.train.speed import LoopOptions, Precision, resolve_precision

COLEARN_MODES = ("random", "summed")


def training_modalities(cfg: TrainConfig) -> tuple[str, ...]:
    """The inputs a regime trains on and early-stops on."""
    return {"audio": ("a",), "visual": ("v",), "conventional": ("av",), "colearn": ("av", "a", "v")}[cfg.regime]


def colearn_draws(seed: int, epoch: int, modalities: tuple[str, ...]) -> Iterator[str]:
    """Co-learning's per-mini-batch modality (Eq. 20, random mode): uniform over ``modalities``, independent
    per batch, the same sequence on every rank (seeded by seed and epoch only)."""
    rng = np.random.default_rng([seed, epoch, 7])
    while True:
        yield modalities[int(rng.integers(len(modalities)))]


def loss_sum(model: CrossModalTransformer, batch: Batch, modality: str) -> torch.Tensor:
    """BCE summed over the 6 labels and over the clips that have ``modality`` (0 if none, still in the graph)."""
    logits = model(**batch.inputs(modality))
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none").sum(dim=1)
    return loss[batch.usable(modality)].sum()


class StepLoss(torch.nn.Module):
    """One step's loss in one forward call (what DistributedDataParallel wraps): sum over the drawn
    modalities of each modality's summed clip loss times its weight (1 / clips with it, over all ranks)."""

    def __init__(self, model: CrossModalTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, weights: dict[str, float]) -> torch.Tensor:
        return torch.stack([loss_sum(self.model, batch, m) * w for m, w in weights.items()]).sum()


def cmvn_stats(split: CacheSplit, max_clips: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of audio features over (a sample of) the training clips."""
    idx = [i for i in range(len(split)) if split.audio_length(i) > 0][:max_clips]
    if not idx:
        dim = split.features.audio_dim
        return torch.zeros(dim), torch.ones(dim)
    feats = np.concatenate([split.audio(i) for i in idx]).astype(np.float64)
    return torch.from_numpy(feats.mean(0)).float(), torch.from_numpy(feats.std(0)).float()


def load_init(module: torch.nn.Module | None, path: Path | None, what: str) -> None:
    """Load a user's pretrained state dict into one encoder (keys that match by name and shape)."""
    if path is None:
        return
    if module is None:
        raise AvemoError(f"{path}: this regime has no {what} encoder to initialise")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AvemoError(f"{path}: cannot read {what} init weights ({str(exc).splitlines()[0]})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise AvemoError(f"{path}: no tensor matches the {what} encoder's names and shapes")
    module.load_state_dict(matched, strict=False)
    print(f"{what} init: loaded {len(matched)}/{len(own)} tensors from {path}")


def _same_run(payload: dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig) -> bool:
    """A run may be resumed with a larger epoch budget or patience, nothing else changed."""
    budget = ("max_epochs", "patience", "min_epochs")
    # Through the dataclass: a run saved before a field existed has that field's default.
    saved = {k: v for k, v in to_dict(from_dict(TrainConfig, payload["train_config"])).items() if k not in budget}
    wanted = {k: v for k, v in to_dict(train_cfg).items() if k not in budget}
    return payload["model_config"] == to_dict(model_cfg) and saved == wanted


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss (BCE summed over labels)")
    for modality in history[0]["valid_mF1"]:
        ax2.plot(epochs, [100 * h["valid_mF1"][modality] for h in history], marker="o", label=modality.upper())
    ax2.set(xlabel="epoch", ylabel="valid mean mF1 (%)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class Executor:
    """One run's model, optimiser and step loss in its process group: ``train_epoch`` and ``cv`` (WeNet's shape)."""

    model: CrossModalTransformer
    optimizer: torch.optim.Optimizer
    step_loss: torch.nn.Module  # StepLoss, wrapped in DistributedDataParallel under torchrun
    cfg: TrainConfig
    ctx: Dist
    precision: Precision = field(default_factory=lambda: Precision("cpu"))
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = self.precision.scaler()

    @property
    def modalities(self) -> tuple[str, ...]:
        return training_modalities(self.cfg)

    def train_epoch(self, loader: torch.utils.data.DataLoader, epoch: int, progress: bool) -> dict[str, float]:
        """One pass over the training loader: train_loss (per step, over all ranks), train_seconds, clips_per_second."""
        from tqdm import tqdm

        cfg, ctx = self.cfg, self.ctx
        loader.batch_sampler.epoch = epoch
        draws = colearn_draws(cfg.seed, epoch, self.modalities)
        if ctx.active:
            torch.manual_seed(cfg.seed * 100_003 + epoch * 1_009 + ctx.rank)  # dropout differs per rank
        self.model.train()
        total, steps, clips, start = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}", disable=not (progress and ctx.main), leave=False)
        for batch in bar:
            if cfg.regime == "colearn" and cfg.colearn_mode == "random":
                chosen: tuple[str, ...] = (next(draws),)
            else:
                chosen = self.modalities
            loss = self.step(batch, chosen)
            if loss is None:
                continue
            total += loss / ctx.world
            steps += 1
            clips += len(batch.labels)
            bar.set_postfix(loss=f"{total / steps:.3f}")
        if ctx.active:
            total, clips = (float(v) for v in ctx.all_sum(torch.tensor([total, float(clips)], dtype=torch.float64)))
        seconds = time.perf_counter() - start
        return {
            "train_loss": total / max(1, steps),
            "train_seconds": seconds,
            "clips_per_second": clips / seconds if seconds > 0 else 0.0,
        }

    def step(self, batch: Batch, chosen: tuple[str, ...]) -> float | None:
        """One optimiser step on ``chosen`` modalities; its loss, or None when no clip of any rank has them."""
        ctx = self.ctx
        # Clips with each drawn modality over all ranks: every rank weighs its clip losses so the
        # averaged gradient equals one process's gradient over the whole global batch.
        counts = ctx.all_sum(torch.tensor([float(batch.usable(m).sum()) for m in chosen]))
        weights = {m: ctx.world / float(c) for m, c in zip(chosen, counts, strict=True) if c > 0}
        if not weights:
            return None
        with self.precision.autocast():
            loss = self.step_loss(batch.to(ctx.device), weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # the clip sees the true gradients
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        return loss.item()

    def cv(self, split: CacheSplit) -> dict[str, Any]:
        """The validation pass: Table-2 metrics of each trained modality on ``split``."""
        return evaluate_model(self.model, split, self.modalities, self.ctx)


def new_state() -> dict[str, Any]:
    """Early-stopping bookkeeping of a run that has not trained yet (what last.pt carries besides weights)."""
    return {"epoch": 0, "best_metric": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}


def should_continue(state: dict[str, Any], cfg: TrainConfig) -> bool:
    """Another epoch: the budget is not spent, and early stopping has not ended the run (or may not yet)."""
    return state["epoch"] < cfg.max_epochs and (state["bad_epochs"] < cfg.patience or state["epoch"] < cfg.min_epochs)


def record_epoch(state: dict[str, Any], epoch: int, stats: dict[str, float], results: dict[str, Any]) -> bool:
    """Add an epoch's training stats and validation results to ``state``; True when it is the best so far."""
    valid_mf1 = {m: results[m]["average"]["mF1"] for m in results}
    metric = float(np.mean(list(valid_mf1.values())))
    record = {
        "epoch": epoch,
        "train_loss": stats["train_loss"],
        "valid_mF1": valid_mf1,
        "valid_wF1": {m: results[m]["average"]["wF1"] for m in results},
        "metric": metric,
        "train_seconds": stats["train_seconds"],
        "clips_per_second": stats["clips_per_second"],
    }
    state["history"].append(record)
    state["epoch"] = epoch
    improved = metric > state["best_metric"]
    if improved:
        state.update(best_metric=metric, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    return improved


def save_epoch(
    out: Path, data: Path, ex: Executor, state: dict[str, Any], results: dict[str, Any], improved: bool
) -> None:
    """last.pt (and best.pt when ``improved``), history.json and the curves after an epoch; rank 0 only."""
    extra = {
        "optimizer": ex.optimizer.state_dict(),
        "scaler": ex.scaler.state_dict(),  # empty unless fp16
        "torch_rng": torch.get_rng_state(),
        "data": str(Path(data).resolve()),
    }
    extra |= {**state, "processes": ex.ctx.world}
    if improved:
        save_checkpoint(out / BEST_CHECKPOINT, ex.model, ex.cfg, valid=results, **extra)
    save_checkpoint(out / LAST_CHECKPOINT, ex.model, ex.cfg, **extra)
    atomic_write_json(out / HISTORY_FILE, state["history"])
    plot_curves(state["history"], out / CURVES_FILE)


def start_or_resume(
    out: Path,
    ex: Executor,
    model_cfg: ModelConfig,
    train_split: CacheSplit,
    inits: tuple[Path | None, Path | None],
) -> dict[str, Any] | None:
    """Resume from ``out``'s last.pt (weights, optimiser, RNG; its state returned) or start a new run: the
    audio CMVN from ``train_split`` and the user's (audio, visual) encoder weights (None returned)."""
    last = out / LAST_CHECKPOINT
    if not last.exists():
        with torch.no_grad():
            ex.model.set_cmvn(*(t.to(ex.ctx.device) for t in cmvn_stats(train_split)))
        load_init(ex.model.audio, inits[0], "audio")
        load_init(ex.model.visual, inits[1], "visual")
        return None
    payload = read_checkpoint(last)
    if not _same_run(payload, model_cfg, ex.cfg):
        raise AvemoError(f"{out}: holds a run with other settings; use a new --out or the same options")
    if "length_buckets" not in payload["train_config"]:  # saved by an avemo that drew batches by shuffling alone
        print(f"{out}: a run saved before length buckets: its remaining epochs draw batches from length buckets")
    ex.model.load_state_dict(payload["model"])
    ex.optimizer.load_state_dict(payload["optimizer"])
    if ex.scaler.is_enabled() and payload.get("scaler"):
        ex.scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["torch_rng"])
    return {k: payload[k] for k in new_state()}


def distribute(step_loss: torch.nn.Module, cfg: TrainConfig, ctx: Dist) -> torch.nn.Module:
    """``step_loss`` wrapped in DistributedDataParallel under torchrun, else itself."""
    if not ctx.active:
        return step_loss
    # A co-learning step on A or V leaves the other encoder unused; every rank draws the same
    # modality, so the unused set agrees across ranks and DDP only has to look for it.
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    drawn = cfg.regime == "colearn" and cfg.colearn_mode == "random"
    return torch.nn.parallel.DistributedDataParallel(step_loss, device_ids=ids, find_unused_parameters=drawn)


def train(
    data: Path,
    out: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    audio_init: Path | None = None,
    visual_init: Path | None = None,
    loop: LoopOptions = LoopOptions(),
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) one run; returns the best validation result. ``loop``: how it runs on the device."""
    if train_cfg.colearn_mode not in COLEARN_MODES:
        raise AvemoError(f"unknown --colearn-mode {train_cfg.colearn_mode!r}; expected one of {COLEARN_MODES}")
    out = Path(out)
    ctx = init_from_env()
    say = print if ctx.main else _silent
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(train_cfg.seed)
    train_split = CacheSplit(data, "train", model_cfg.features)
    valid_split = CacheSplit(data, "valid", model_cfg.features)
    model = CrossModalTransformer(model_cfg).to(ctx.device)
    if loop.channels_last and model.visual is not None:
        model.visual.cnn.to(memory_format=torch.channels_last)  # before the optimiser makes its state like them
    optimizer = torch.optim.RAdam(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    precision = resolve_precision(loop.precision, ctx.device)
    ex = Executor(model, optimizer, StepLoss(model), train_cfg, ctx, precision)
    state = start_or_resume(out, ex, model_cfg, train_split, (audio_init, visual_init))
    if state is not None:
        say(f"resuming {out} after epoch {state['epoch']}" + (f" on {ctx.world} processes" if ctx.active else ""))
    state = state or new_state()
    ex.step_loss = distribute(ex.step_loss, train_cfg, ctx)
    say(
        f"model: {count_parameters(model):,} parameters; regime {train_cfg.regime}"
        f"{' (' + train_cfg.colearn_mode + ')' if train_cfg.regime == 'colearn' else ''}; "
        f"train {len(train_split)} / valid {len(valid_split)} clips; {precision.name}"
        + (f"; {ctx.world} processes ({ctx.device.type}), global batch {train_cfg.batch_size}" if ctx.active else "")
    )
    need = {"need_audio": model_cfg.use_audio, "need_faces": model_cfg.use_visual}
    loader = make_loader(
        train_split,
        train_cfg.batch_size,
        train_cfg.seed,
        shuffle=True,
        workers=loop.workers,
        shard=(ctx.rank, ctx.world),
        buckets=train_cfg.length_buckets,
        pin_memory=loop.pin_memory and ctx.device.type == "cuda",
        **need,
    )
    while should_continue(state, train_cfg):
        epoch = state["epoch"] + 1
        stats = ex.train_epoch(loader, epoch, progress)
        results = ex.cv(valid_split)
        improved = record_epoch(state, epoch, stats, results)
        if ctx.main:  # one writer; every rank holds the same weights and history
            save_epoch(out, data, ex, state, results, improved)
        ctx.barrier()  # no rank starts an epoch another may resume from before last.pt is complete
        valid_mf1 = state["history"][-1]["valid_mF1"]
        say(
            f"epoch {epoch}: loss {stats['train_loss']:.3f}, valid mean mF1 "
            + ", ".join(f"{m.upper()} {100 * v:.1f}" for m, v in valid_mf1.items())
            + f" ({stats['clips_per_second']:.1f} clips/s){' *' if improved else ''}"
        )
    say(f"best epoch {state['best_epoch']}: valid mean mF1 {100 * state['best_metric']:.1f} -> {out / BEST_CHECKPOINT}")
    shutdown(ctx)
    return state


def _silent(*args: object, **kwargs: object) -> None:
    """print() for ranks other than 0."""
