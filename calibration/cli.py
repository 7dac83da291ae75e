"""`avemo calibrate`."""

from __future__ import annotations

from pathlib import Path

import click

from avemo.calibration.quantize import DEFAULT_KEEP, METHODS


@click.command()
@click.argument("models", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="Feature cache (`avemo prepare` or `avemo synth`) with the model's feature settings.",
)
@click.option("--split", default="train", show_default=True, help="Split the calibration clips come from.")
@click.option(
    "--samples",
    type=int,
    default=128,
    show_default=True,
    help="Calibration clips (A+V), spread over clip-length quartiles and all six labels.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="entropy",
    show_default=True,
    help="ModelOpt activation calibration (the int8-cpu candidate always uses min/max).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the clip sample.")
@click.option(
    "--clips",
    "clips_from",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Reuse the clip ids of an earlier int8/calibration.json (reproducible rebuild).",
)
@click.option(
    "--keep", multiple=True, metavar="REGEX", help="Also keep nodes whose names match REGEX in fp32 (repeatable)."
)
@click.option(
    "--no-default-keep", is_flag=True, help=f"Quantize the default-kept nodes too ({', '.join(DEFAULT_KEEP)})."
)
@click.option(
    "--cpu-int8",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="ONNX Runtime's own int8 graph (int8-cpu/): auto ships it only if faster than fp32 "
    "within the accuracy target.",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(min=0.0),
    default=None,
    metavar="POINTS",
    help="Accuracy budget: keep the fewest, most sensitive layers unquantized (measured one by one) until the "
    "A+V mF1 drop on the decision split is at most POINTS; fails if that needs over half the layers.",
)
@click.option("--accept-miss", is_flag=True, help="With --max-drop: write the best set found even if it misses.")
@click.option("--report-splits", default="valid,test", show_default=True, help="Splits of the accuracy report.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores).")
def calibrate(
    models: Path, data: Path, split: str, samples: int, method: str, seed: int, clips_from: Path | None,
    keep: tuple[str, ...], no_default_keep: bool, cpu_int8: str, max_drop: float | None, accept_miss: bool,
    report_splits: str, threads: int | None,
) -> None:  # fmt: skip
    """INT8 graphs for an exported model, calibrated on training features, with an accuracy report.

    Writes MODELS/int8/ (explicit Q/DQ from NVIDIA ModelOpt: what TensorRT builds
    as INT8; also runs in ONNX Runtime), MODELS/int8/calibration.json (clip ids
    and every scale) and MODELS/int8/accuracy.md|json (fp32 vs fp16 vs int8,
    Table-2 averages and label agreement). MODELS/int8-cpu/ (ONNX Runtime's
    quantizer) is kept only when measured faster than fp32 here within the
    target (A+V mF1 drop <= 0.5 points).

    \b
    Examples:
      avemo calibrate models/ --data cache/ --split train --samples 256
      avemo calibrate models/ --data cache/ --method max --keep 'node_matmul_[0-9]+'
      avemo calibrate models/ --data cache/ --clips models/int8/calibration.json
      avemo calibrate models/ --data cache/ --max-drop 0.5     # mixed precision within 0.5 mF1 points
    """
    from avemo.calibration.calibrate import calibrate as run

    quiet_onnxruntime()
    result = run(
        models, data, split, samples, method, seed, not no_default_keep, keep, clips_from, cpu_int8,
        tuple(s for s in report_splits.split(",") if s), threads, log=click.echo, max_drop=max_drop,
        accept_miss=accept_miss,
    )  # fmt: skip
    click.echo((models / "int8" / "accuracy.md").read_text())
    click.echo(f"wrote {models}/int8 ({result['decision_split']} decides; JSON: {models}/int8/accuracy.json)")


def quiet_onnxruntime() -> None:
    """ONNX Runtime's logger to errors only, for the sessions calibration opens, said once.

    Loading the TensorRT-shaped int8 graphs (int8/fp16/) on the CPU, ONNX Runtime warns once per weight
    scale and session that it cannot constant-fold that fp16 Mul (its CPU provider has no fp16 Mul
    kernel): over a hundred coloured lines per run, none of them a problem (TensorRT folds them)."""
    from avemo.deps import require

    require("onnxruntime", "pip install 'avemo[runtime]'").set_default_logger_severity(3)
    click.echo(
        "ONNX Runtime's warnings are off while calibrating: on the CPU it cannot constant-fold the fp16 Mul of "
        "each weight scale in int8/fp16/ (no fp16 Mul kernel there; TensorRT folds them)",
        err=True,
    )
