"""The multi-seed study: trains seeds, aggregates, judges, resumes; its check on early stopping."""

import json
import re

import torch
from click.testing import CliRunner

from avemo.cli import main
from avemo.contract import LABELS
from avemo.train.report import selection_markdown
from avemo.train.study import selection_check


def _row(variant, modality, seed, mf1, run=None):
    """An evaluation row as evaluate_runs makes it, with the same F1 for every emotion."""
    metrics = {name: {"wF1": mf1, "mF1": mf1} for name in (*LABELS, "average")}
    return {
        "run": run or f"runs/{variant}/seed{seed}",
        "variant": variant,
        "regime": "colearn" if variant.startswith("colearn") else variant,
        "inference": modality,
        "metrics": metrics,
        "training": {"seed": seed, "epochs": 10, "best_epoch": 7, "clips_per_second": 100.0},
    }


def test_selection_check_reads_what_choosing_on_the_mean_cost_av(tmp_path):
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
