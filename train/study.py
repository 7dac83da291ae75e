"""The multi-seed study of the paper's claims (`avemo study`, `avemo eval --aggregate`).

Each training variant (the two baselines, conventional A+V, co-learning in
each mode) is trained with several seeds until early stopping ends it, every
run is evaluated on one split, and the runs of a variant are aggregated into
Table 2 as mean and spread. Each claim of the paper (section 4.3) then gets a
verdict from the difference of means against the seeds' noise:

(a) a conventionally trained A+V model degrades on single-modality input
    (conventional on A / V below the audio / visual baseline);
(b) co-learning recovers single-modality performance to about the baselines'
    level (co-learning on A / V not below the baseline);
(c) co-learning also improves A+V over the conventional model.

Noise rule: a difference ``d`` of two means over n1 and n2 seeds is beyond
noise when ``|d| > 2 * sqrt(sd1^2 / n1 + sd2^2 / n2)`` (about a 95 % interval
of the difference); with a single seed the spread is unknown and the verdict
says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import LABELS, MODALITY_TITLES

#: Training variants of a study: name -> (regime, co-learning mode), in table order.
VARIANTS: dict[str, tuple[str, str]] = {
    "audio": ("audio", "random"),
    "visual": ("visual", "random"),
    "conventional": ("conventional", "random"),
    "colearn": ("colearn", "random"),
    "colearn-summed": ("colearn", "summed"),
}
VARIANT_TITLES = {
    "audio": "Baseline A",
    "visual": "Baseline V",
    "conventional": "Conventional A+V",
    "colearn": "Interactive co-learning",
    "colearn-summed": "Interactive co-learning (summed)",
}
COLEARN_VARIANTS = ("colearn", "colearn-summed")
PRIMARY = "mF1"  # the paper argues from average macro F1; wF1 is reported beside it
NOISE_FACTOR = 2.0
NOISE_RULE = (
    "a difference of two means of average mF1 over n1 and n2 seeds counts when it exceeds "
    "2·sqrt(sd1²/n1 + sd2²/n2) (about a 95 % interval of the difference); otherwise it is within noise. "
    "Claim (b) asks only that co-learning not fall below the baseline, so within noise holds it."
)


def variant_of(regime: str, colearn_mode: str) -> str:
    """The study's name for a run's training: its regime, or ``colearn-summed``."""
    return "colearn-summed" if regime == "colearn" and colearn_mode == "summed" else regime


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "values": [float(v) for v in arr],
    }


def aggregate(rows: Iterable[dict[str, Any]], per_run: bool = False) -> list[dict[str, Any]]:
    """Group evaluation rows (one per run and inference modality) by variant and modality.

    Each group holds, per emotion and for the average, wF1 and mF1 as mean,
    sample sd, min, max and the per-seed values; groups come in study order.
    ``per_run`` keeps every run apart (groups of one, in the rows' order).
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["run"] if per_run else "", row["variant"], row["inference"])
        groups.setdefault(key, []).append(row)
    order = {name: i for i, name in enumerate(VARIANTS)}
    keys = list(groups)
    if not per_run:
        keys.sort(key=lambda k: (order.get(k[1], len(order)), k[1], list(MODALITY_TITLES).index(k[2])))
    out = []
    for key in keys:
        members, (_, variant, modality) = groups[key], key
        metrics = {
            name: {m: _stats([r["metrics"][name][m] for r in members]) for m in ("wF1", "mF1")}
            for name in (*LABELS, "average")
        }
        out.append(
            {
                "variant": variant,
                "inference": modality,
                "runs": [r["run"] for r in members],
                "seeds": [r["training"]["seed"] for r in members],
                "epochs": [r["training"]["epochs"] for r in members],
                "best_epochs": [r["training"]["best_epoch"] for r in members],
                "stopped_early": [r["training"].get("stopped_early", True) for r in members],
                "metrics": metrics,
            }
        )
    return out


def _pct(stats: dict[str, Any], spread: bool = True) -> str:
    text = f"{100 * stats['mean']:.1f}"
    if spread and len(stats["values"]) > 1:
        text += f" ± {100 * stats['sd']:.1f}"
    return text


def summary_markdown(groups: list[dict[str, Any]]) -> str:
    """Average wF1 / mF1 per (variant, inference): mean ± sd (min-max) over seeds, percent. A run that ran out
    of epochs before early stopping ended it is marked ``max``."""
    lines = [
        "| Training | Inference | seeds | Average wF1 | Average mF1 | mF1 min-max | epochs (best) |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        avg = g["metrics"]["average"]
        stopped = g.get("stopped_early", [True] * len(g["epochs"]))
        epochs = ", ".join(
            f"{e} ({b}){'' if early else ' max'}"
            for e, b, early in zip(g["epochs"], g["best_epochs"], stopped, strict=True)
        )
        lines.append(
            f"| {VARIANT_TITLES.get(g['variant'], g['variant'])} | {MODALITY_TITLES[g['inference']]} "
            f"| {len(g['seeds'])} | {_pct(avg['wF1'])} | {_pct(avg['mF1'])} "
            f"| {100 * avg['mF1']['min']:.1f}-{100 * avg['mF1']['max']:.1f} | {epochs} |"
        )
    return "\n".join(lines) + "\n"


def table_markdown(groups: list[dict[str, Any]]) -> str:
    """The paper's Table 2 layout, percent: one run per row, or the mean over seeds (sd in the JSON)."""
    head = ["Training", "Inference"] + [
        f"{name.capitalize()} {m}" for name in (*LABELS, "average") for m in ("wF1", "mF1")
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [VARIANT_TITLES.get(g["variant"], g["variant"]), MODALITY_TITLES[g["inference"]]]
        for name in (*LABELS, "average"):
            cells += [_pct(g["metrics"][name][m], spread=False) for m in ("wF1", "mF1")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(groups: list[dict[str, Any]], x: tuple[str, str], y: tuple[str, str]) -> dict[str, Any] | None:
    """Average-mF1 difference of group ``x`` minus group ``y`` (variant, inference) and its noise level."""
    by = {(g["variant"], g["inference"]): g["metrics"]["average"] for g in groups}
    if len(by) < len(groups):
        raise ValueError("compare needs one group per (variant, inference): aggregate the rows first")
    if x not in by or y not in by:
        return None
    a, b = by[x][PRIMARY], by[y][PRIMARY]
    n_a, n_b = len(a["values"]), len(b["values"])
    noise = NOISE_FACTOR * math.sqrt(a["sd"] ** 2 / n_a + b["sd"] ** 2 / n_b) if min(n_a, n_b) > 1 else None
    return {
        "x": list(x),
        "y": list(y),
        "x_mean": a["mean"],
        "y_mean": b["mean"],
        "delta": a["mean"] - b["mean"],
        "noise": noise,
        "wF1_delta": by[x]["wF1"]["mean"] - by[y]["wF1"]["mean"],
    }


def _direction(c: dict[str, Any]) -> str:
    """'above', 'below' or 'within noise' for x against y."""
    if c["noise"] is not None and abs(c["delta"]) <= c["noise"]:
        return "within noise"
    return "above" if c["delta"] > 0 else "below"


# claim id -> (statement, [(x, y)], direction(s) that hold it)
def _claims(colearn: str) -> list[tuple[str, str, list[tuple[tuple[str, str], tuple[str, str]]], tuple[str, ...]]]:
    title = VARIANT_TITLES[colearn].lower()
    return [
        (
            "a",
            "conventional A+V training degrades single-modality inference (below the baseline)",
            [(("conventional", "a"), ("audio", "a")), (("conventional", "v"), ("visual", "v"))],
            ("below",),
        ),
        (
            "b",
            f"{title} keeps single-modality inference at the baselines' level (not below them)",
            [((colearn, "a"), ("audio", "a")), ((colearn, "v"), ("visual", "v"))],
            ("above", "within noise"),
        ),
        (
            "b'",
            f"{title} recovers single-modality inference relative to the conventional model (above it)",
            [((colearn, "a"), ("conventional", "a")), ((colearn, "v"), ("conventional", "v"))],
            ("above",),
        ),
        (
            "c",
            f"{title} improves A+V inference over the conventional model (above it)",
            [((colearn, "av"), ("conventional", "av"))],
            ("above",),
        ),
    ]


def verdicts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per claim, inference modality and co-learning variant present in ``groups``.

    ``verdict`` is ``held``, ``not held`` or ``within noise`` (for claims that need a
    difference beyond noise); a claim that only asks "not below" is ``held`` when within noise.
    """
    present = {g["variant"] for g in groups}
    out, seen = [], set()
    for colearn in [v for v in COLEARN_VARIANTS if v in present] or [None]:
        for claim, statement, pairs, holds in _claims(colearn or "colearn"):
            for x, y in pairs:
                if (claim, x, y) in seen:  # claim (a) does not depend on the co-learning variant
                    continue
                seen.add((claim, x, y))
                c = compare(groups, x, y)
                if c is None:
                    continue
                direction = _direction(c)
                if direction in holds:
                    verdict = "held"
                elif direction == "within noise":
                    verdict = "within noise"
                else:
                    verdict = "not held"
                out.append({"claim": claim, "statement": statement, "direction": direction, "verdict": verdict, **c})
    return out


def verdict_lines(items: list[dict[str, Any]]) -> list[str]:
    """Human sentences for ``verdicts``: numbers in percent points of average mF1."""
    lines = []
    for v in items:
        x, y = VARIANT_TITLES[v["x"][0]], VARIANT_TITLES[v["y"][0]]
        noise = "one seed, spread unknown" if v["noise"] is None else f"noise ±{100 * v['noise']:.1f}"
        lines.append(
            f"({v['claim']}) {MODALITY_TITLES[v['x'][1]]} inference, {x} vs {y}: "
            f"mF1 {100 * v['x_mean']:.1f} vs {100 * v['y_mean']:.1f} ({100 * v['delta']:+.1f}, {noise}; "
            f"wF1 {100 * v['wF1_delta']:+.1f}) -> **{v['verdict']}**"
        )
    return lines


def selection_check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What early stopping on the mean of A+V, A and V costs co-learning's A+V (validation split).

    Per co-learning run: the A+V validation mF1 at the epoch kept (best mean over the three
    modalities) and at the epoch that is best for A+V alone (how the conventional model is chosen).
    """
    from avemo.contract import HISTORY_FILE

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


def selection_markdown(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return ""
    lines = []
    for variant in COLEARN_VARIANTS:
        mine = [c for c in checks if c["variant"] == variant]
        if mine:
            gap = np.mean([c["best_av"] - c["kept_av"] for c in mine])
            same = sum(c["kept_epoch"] == c["best_av_epoch"] for c in mine)
            lines.append(
                f"- {VARIANT_TITLES[variant]}: the epoch kept (best mean of A+V, A, V) was also the best A+V epoch "
                f"in {same} of {len(mine)} runs; choosing on A+V alone would have raised A+V validation mF1 by "
                f"{100 * gap:.1f} points on average."
            )
    return "".join(f"{line}\n" for line in lines)


def segment_check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The learned segment vectors (AddAudioSegment / AddVisualSegment) of each A+V run's kept checkpoint:
    their norms and cosine, beside the norm of an encoder output token (LayerNorm: about sqrt(d))."""
    import torch

    from avemo.contract import BEST_CHECKPOINT

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


def segment_markdown(checks: list[dict[str, Any]]) -> str:
    lines = []
    for variant in VARIANTS:
        mine = [c for c in checks if c["variant"] == variant]
        if mine:
            mean = {k: float(np.mean([c[k] for c in mine])) for k in ("audio_norm", "visual_norm", "cosine")}
            lines.append(
                f"- {VARIANT_TITLES[variant]}: audio segment norm {mean['audio_norm']:.2f}, visual "
                f"{mean['visual_norm']:.2f} (an encoder output token: about {mine[0]['token_norm']:.1f}), "
                f"cosine {mean['cosine']:+.2f} (mean of {len(mine)} runs)"
            )
    return "".join(f"{line}\n" for line in lines)


def claims_markdown(items: list[dict[str, Any]]) -> str:
    return "".join(f"- {line}\n" for line in verdict_lines(items))


def report_markdown(
    name: str,
    groups: list[dict[str, Any]],
    items: list[dict[str, Any]],
    checks: list[dict[str, Any]] = (),
    segments: list[dict[str, Any]] = (),
) -> str:
    """One benchmark's section: summary with spread, Table 2 of means, verdicts, implementation checks."""
    selection = selection_markdown(list(checks))
    segment = segment_markdown(list(segments))
    return (
        f"### {name}: average over seeds\n\n"
        + summary_markdown(groups)
        + f"\n### {name}: Table 2 (mean over seeds)\n\n"
        + table_markdown(groups)
        + f"\n### {name}: the paper's claims (average mF1)\n\n"
        + claims_markdown(items)
        + (f"\n### {name}: early stopping on the mean of the modalities\n\n" + selection if selection else "")
        + (f"\n### {name}: segment vectors\n\n" + segment if segment else "")
    )


def runs_markdown(rows: list[dict[str, Any]]) -> str:
    """One line per training run: seed, epochs trained, best epoch, training speed."""
    runs = {r["run"]: r for r in rows}
    lines = ["| run | training | seed | epochs | best epoch | train clips/s (median) |", "|---|---|---|---|---|---|"]
    for run, r in runs.items():
        t = r["training"]
        speed = f"{t['clips_per_second']:.1f}" if t["clips_per_second"] is not None else "-"
        lines.append(
            f"| {run} | {VARIANT_TITLES[r['variant']]} | {t['seed']} | {t['epochs']} | {t['best_epoch']} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def results_markdown(sources: list[str], command: str, split: str, body: str) -> str:
    """A RESULTS.md page: what the data are, the command, split and machine, then ``body``."""
    from avemo import __version__
    from avemo.machine import describe, package_version

    if sources and all(s.startswith("synth") for s in sources):
        data = (
            f"**Synthetic data, not CMU-MOSEI**: made by `avemo synth` ({'; '.join(sources)}). "
            "These numbers test the regimes and the method on data whose cues we control; "
            "they say nothing about the paper's MOSEI figures."
        )
    else:
        data = f"Data: {'; '.join(sources) or 'see the runs'}."
    return (
        "# Results\n\n"
        + data
        + "\n\n"
        + f"- Command: `{command}`\n"
        + f"- Split: {split}; threshold 0.5; F1 as scikit-learn `f1_score(average='weighted'|'macro')`, percent\n"
        + f"- Machine: {describe()}; avemo {__version__}, torch {package_version('torch')}\n\n"
        + body
    )


def write_json(path: Path, payload: dict[str, Any]) -> None:
    from avemo.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, payload)


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _eta(done: int, total: int, started: float) -> str:
    """', about 12 min left' from the mean time of the runs so far (resumed runs count, so it is rough)."""
    import time

    if not done:
        return ""
    left = (time.monotonic() - started) / done * (total - done)
    return f", about {left / 60:.0f} min left" if left >= 60 else f", about {left:.0f} s left"


def run_study(
    benchmarks: dict[str, Path],
    out: Path,
    preset: str,
    base: Any,
    seeds: list[int],
    variants: list[str],
    split: str = "test",
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train every variant with every seed on every benchmark (resuming finished or cut runs), evaluate
    each run's best checkpoint on ``split``, aggregate and judge the claims. Writes, per benchmark,
    ``OUT/NAME/study.json`` and ``study.md``; returns {name: {"groups", "verdicts", "rows"}}."""
    import dataclasses
    import time

    from avemo.config import model_config_for_regime
    from avemo.train.cache import preset_for_cache
    from avemo.train.evaluate import evaluate_runs
    from avemo.train.trainer import train

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
        write_json(
            Path(out) / name / "study.json", {"benchmark": name, "data": str(data), "split": split, **results[name]}
        )
        (Path(out) / name / "study.md").write_text(report_markdown(name, groups, items, checks, segments))
    return results
