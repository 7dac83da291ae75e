"""The report of the paper's claims from evaluation rows (`avemo eval`, `avemo study`): pure, no training.

The names of the training variants, the aggregation of rows (one per run and
inference modality) into Table 2 as mean and spread over seeds, the verdict on
each claim of the paper (section 4.3), and their Markdown. It reads no files
and imports nothing of training, so the evaluator, the study runner and the
CLI all build on it. A verdict comes from the difference of means against the
seeds' noise:

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

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from avemo.config import TrainConfig
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


def selection_markdown(checks: list[dict[str, Any]]) -> str:
    """One line per co-learning variant from ``study.selection_check``: what early stopping on the mean cost A+V."""
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


def segment_markdown(checks: list[dict[str, Any]]) -> str:
    """One line per variant from ``study.segment_check``: mean segment-vector norms and cosine."""
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
    """``verdict_lines`` as a Markdown list."""
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


def eval_tables(rows: list[dict[str, Any]], per_seed: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """`avemo eval`'s groups (one per run, or over seeds with ``per_seed``), the verdicts (always judged over
    seeds) and the Markdown table (the summary with spread first when ``per_seed``)."""
    groups = aggregate(rows, per_run=not per_seed)
    claims = verdicts(aggregate(rows))
    table = (summary_markdown(groups) + "\n" if per_seed else "") + table_markdown(groups)
    return groups, claims, table


def eval_body(table: str, claims: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """The body of `avemo eval --results-md`: the table, the verdicts and one line per training run."""
    body = table + "\n## The paper's claims, as measured (average mF1)\n\n" + claims_markdown(claims)
    return body + "\n## Training runs\n\n" + runs_markdown(rows)


def study_settings_markdown(preset: str, seeds: int, base: TrainConfig) -> str:
    """How a study trained and judged, for the top of its RESULTS.md body."""
    return (
        f"- Training: preset {preset}; seeds 0-{seeds - 1}; at most {base.max_epochs} epochs, "
        f"early stopping after {base.patience} epochs without a better validation mean mF1 (not before epoch "
        f"{base.min_epochs}); the best validation epoch's checkpoint is evaluated. Co-learning early-stops on "
        "the mean of its A+V, A and V validation mF1, the others on their one modality.\n"
        f"- Verdicts: {NOISE_RULE}\n\n"
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
