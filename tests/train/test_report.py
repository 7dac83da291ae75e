"""The study's report: aggregation over seeds, the noise rule, the claims' verdicts."""

import numpy as np
import pytest

from avemo.contract import LABELS
from avemo.train.report import aggregate, compare, verdict_lines, verdicts


def _row(variant, modality, seed, mf1):
    """An evaluation row as evaluate_runs makes it, with the same F1 for every emotion."""
    metrics = {name: {"wF1": mf1, "mF1": mf1} for name in (*LABELS, "average")}
    regime = "colearn" if variant.startswith("colearn") else variant
    return {
        "run": f"runs/{variant}/seed{seed}",
        "variant": variant,
        "regime": regime,
        "inference": modality,
        "metrics": metrics,
        "training": {"seed": seed, "epochs": 10, "best_epoch": 7, "clips_per_second": 100.0},
    }


def _rows(table):
    """{(variant, modality): [per-seed mF1]} -> rows."""
    return [_row(v, m, seed, x) for (v, m), values in table.items() for seed, x in enumerate(values)]


def test_aggregate_gives_mean_sample_sd_and_range_per_group():
    groups = aggregate(_rows({("audio", "a"): [0.50, 0.60, 0.70], ("conventional", "av"): [0.4, 0.4, 0.4]}))
    assert [(g["variant"], g["inference"]) for g in groups] == [("audio", "a"), ("conventional", "av")]
    avg = groups[0]["metrics"]["average"]["mF1"]
    assert avg["mean"] == pytest.approx(0.6)
    assert avg["sd"] == pytest.approx(np.std([0.5, 0.6, 0.7], ddof=1))
    assert (avg["min"], avg["max"]) == (0.5, 0.7)
    assert groups[0]["seeds"] == [0, 1, 2]


def test_aggregate_orders_by_study_and_keeps_runs_apart_on_request():
    rows = _rows({("colearn", "av"): [0.5], ("audio", "a"): [0.6], ("colearn", "a"): [0.4]})
    assert [(g["variant"], g["inference"]) for g in aggregate(rows)] == [
        ("audio", "a"),
        ("colearn", "a"),
        ("colearn", "av"),
    ]
    two = _rows({("audio", "a"): [0.6, 0.7]})
    assert len(aggregate(two)) == 1 and len(aggregate(two, per_run=True)) == 2
    with pytest.raises(ValueError, match="aggregate the rows first"):
        compare(aggregate(two, per_run=True), ("audio", "a"), ("audio", "a"))


def test_noise_rule_decides_between_held_and_within_noise():
    # Claim (a): the conventional model's A inference is below the audio baseline.
    clear = verdicts(aggregate(_rows({("audio", "a"): [0.60, 0.61, 0.62], ("conventional", "a"): [0.50, 0.51, 0.52]})))
    assert [(v["claim"], v["verdict"]) for v in clear] == [("a", "held")]
    assert clear[0]["delta"] == pytest.approx(-0.10)
    assert clear[0]["noise"] == pytest.approx(2 * np.sqrt(2 * 0.01**2 / 3))
    noisy = verdicts(aggregate(_rows({("audio", "a"): [0.40, 0.60, 0.80], ("conventional", "a"): [0.45, 0.55, 0.65]})))
    assert noisy[0]["verdict"] == "within noise"
    reverse = verdicts(aggregate(_rows({("audio", "a"): [0.50, 0.51, 0.52], ("conventional", "a"): [0.6, 0.61, 0.62]})))
    assert reverse[0]["verdict"] == "not held"


def test_claim_b_holds_within_noise_but_claim_c_needs_a_real_gain():
    table = {
        ("audio", "a"): [0.60, 0.62, 0.64],
        ("colearn", "a"): [0.59, 0.61, 0.63],  # level with the baseline: (b) held
        ("conventional", "av"): [0.60, 0.62, 0.64],
        ("colearn", "av"): [0.61, 0.63, 0.65],  # a point above, inside the noise: (c) not shown
        ("colearn-summed", "av"): [0.70, 0.71, 0.72],  # clearly above: (c) held for summed
    }
    by = {(v["claim"], v["x"][0], v["x"][1]): v["verdict"] for v in verdicts(aggregate(_rows(table)))}
    assert by[("b", "colearn", "a")] == "held"
    assert by[("c", "colearn", "av")] == "within noise"
    assert by[("c", "colearn-summed", "av")] == "held"


def test_one_seed_has_no_noise_estimate_and_says_so():
    items = verdicts(aggregate(_rows({("visual", "v"): [0.5], ("conventional", "v"): [0.4]})))
    assert items[0]["noise"] is None and items[0]["verdict"] == "held"
    assert "one seed, spread unknown" in verdict_lines(items)[0]
