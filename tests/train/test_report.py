"""The multi-seed study: aggregation over seeds, the noise rule, the claims' verdicts, the synthetic benchmarks."""

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from avemo.cli import main
from avemo.config import PRESETS
from avemo.contract import LABELS
from avemo.errors import AvemoError
from avemo.train.cache import CacheWriter
from avemo.train.study import aggregate, compare, verdicts
from avemo.train.synth import SYNTH_BENCHMARKS, SynthSpec, make_clip, write_synthetic_cache


def _row(variant, modality, seed, mf1, wf1=None, run=None):
    """An evaluation row as evaluate_runs makes it, with the same F1 for every emotion."""
    metrics = {name: {"wF1": wf1 if wf1 is not None else mf1, "mF1": mf1} for name in (*LABELS, "average")}
    regime = "colearn" if variant.startswith("colearn") else variant
    return {
        "run": run or f"runs/{variant}/seed{seed}",
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
    from avemo.train.study import verdict_lines

    assert "one seed, spread unknown" in verdict_lines(items)[0]


def test_selection_check_reads_what_choosing_on_the_mean_cost_av(tmp_path):
    from avemo.train.study import selection_check, selection_markdown

    run = tmp_path / "colearn" / "seed0"
    run.mkdir(parents=True)
    history = [
        {"epoch": 1, "valid_mF1": {"av": 0.50, "a": 0.40, "v": 0.40}},
        {"epoch": 2, "valid_mF1": {"av": 0.60, "a": 0.40, "v": 0.40}},  # best for A+V alone
        {"epoch": 3, "valid_mF1": {"av": 0.55, "a": 0.50, "v": 0.50}},  # best mean: the one kept
    ]
    (run / "history.json").write_text(json.dumps(history))
    row = _row("colearn", "av", 0, 0.5, run=str(run))
    row["training"]["best_epoch"] = 3
    checks = selection_check([row, _row("audio", "a", 0, 0.5)])
    assert checks == [
        {"run": str(run), "variant": "colearn", "kept_epoch": 3, "kept_av": 0.55, "best_av_epoch": 2, "best_av": 0.6}
    ]
    assert "in 0 of 1 runs" in selection_markdown(checks) and "by 5.0 points" in selection_markdown(checks)


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


def test_study_trains_seeds_aggregates_judges_and_resumes(tiny_cache, tmp_path):
    runner = CliRunner()
    out, md = tmp_path / "study", tmp_path / "RESULTS.md"
    args = ["study", "--data", f"bench={tiny_cache}", "--out", str(out), "--preset", "tiny", "--seeds", "2"]
    args += ["--variants", "audio,conventional", "--epochs", "1", "--min-epochs", "0", "--quiet"]
    result = runner.invoke(main, [*args, "--results-md", str(md)])
    assert result.exit_code == 0, result.output
    assert "== run 1 of 4: bench: audio, seed 0" in result.output  # overall progress, with an ETA after the first
    assert re.search(r"== run 4 of 4, about \d+ s left: bench: conventional, seed 1", result.output), result.output
    report = json.loads((out / "bench" / "study.json").read_text())
    groups = {(g["variant"], g["inference"]): g for g in report["groups"]}
    assert set(groups) == {("audio", "a"), ("conventional", "a"), ("conventional", "v"), ("conventional", "av")}
    assert groups[("audio", "a")]["seeds"] == [0, 1]
    values = groups[("conventional", "av")]["metrics"]["average"]["mF1"]["values"]
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
    assert {v["claim"] for v in report["verdicts"]} == {"a"}  # no co-learning run, no (b)/(c)
    segments = report["segments"]  # the A+V runs' segment vectors, read from their checkpoints
    assert [s["variant"] for s in segments] == ["conventional", "conventional"]
    assert all(s["audio_norm"] > 0 and -1 <= s["cosine"] <= 1 for s in segments)
    text = md.read_text()
    assert "Synthetic data" in text and "## bench" in text and "(a) A inference" in text
    assert "--seeds 2" in text and "noise" in text
    assert f"torch {torch.__version__}" in text  # the code that made the numbers is named with them
    # Rerunning resumes: the finished runs are evaluated again, not retrained.
    last = out / "bench" / "audio" / "seed1" / "last.pt"
    stamp = last.stat().st_mtime_ns
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert last.stat().st_mtime_ns == stamp
    # The same runs through `avemo eval --aggregate`.
    runs = [str(p) for p in sorted((out / "bench").glob("*/seed*"))]
    result = runner.invoke(main, ["eval", *runs, "--aggregate", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "| Baseline A | A | 2 |" in result.output and "±" in result.output
    assert json.loads((tmp_path / "t" / "table.json").read_text())["groups"][0]["seeds"] == [0, 1]


def test_study_rejects_unknown_variants_and_missing_caches(tiny_cache, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["study", "--data", str(tiny_cache), "--out", str(tmp_path), "--variants", "x"])
    assert result.exit_code == 2 and "unknown ['x']" in result.output
    result = runner.invoke(main, ["study", "--data", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no such cache directory" in result.output
