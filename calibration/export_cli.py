"""`avemo export` / `avemo-export`: a run's graphs, and with ``--precision int8`` their calibration, in one command.

It lives here, above both packages it composes (avemo.export writes the
graphs, avemo.calibration calibrates them): calibration may import export,
never the reverse.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from avemo.contract import EXPORT_PRECISIONS
from avemo.options import engine_build_options


@click.command()
@click.argument("run", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--precision",
    type=click.Choice([*EXPORT_PRECISIONS, "int8", "all"]),
    default="fp32",
    show_default=True,
    help="fp16 adds a mixed-precision set in fp16/ (fp32 is always exported as the reference); "
    "int8 also calibrates on --data (as `avemo calibrate` does) and builds int8 engines where TensorRT is.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model directory to write.")
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="int8: the feature cache to calibrate on (its training split, `avemo calibrate`'s defaults).",
)
@click.option(
    "--samples", type=click.IntRange(min=1), default=None, help="int8: calibration clips (default: avemo calibrate's)."
)
@click.option(
    "--max-drop",
    type=click.FloatRange(min=0.0),
    default=None,
    metavar="POINTS",
    help="int8: accuracy budget in A+V mF1 points (as `avemo calibrate --max-drop`).",
)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (>= 17 for LayerNormalization).")
@click.option("--no-simplify", is_flag=True, help="Skip onnx-simplifier.")
@click.option("--force", is_flag=True, help="Replace another model's files in --out.")
@engine_build_options
def export(
    run: Path, precision: str, out: Path, data: Path | None, samples: int | None, max_drop: float | None,
    opset: int, no_simplify: bool, force: bool, workspace: int, timing_cache: Path | None, device_id: int,
    max_batch: int | None,
) -> None:  # fmt: skip
    """Export a run as ONNX graphs (A, V, A+V) sharing one weight file, with a manifest.

    RUN is a run directory (its best.pt is used) or a checkpoint file. Every
    graph is checked against PyTorch in ONNX Runtime at several batch sizes and
    lengths; fp32 differences above 1e-4 fail the export. Where TensorRT and
    pycuda import, the engines are built too. --precision int8 --data CACHE
    exports fp32 + fp16, calibrates INT8 on the cache exactly as `avemo
    calibrate MODELS --data CACHE` does (same report), then builds the int8
    engines.

    \b
    Examples:
      avemo-export runs/colearn --precision fp16 --out models/
      avemo-export runs/colearn --precision int8 --data cache/ --out models/
      avemo-export runs/colearn --precision int8 --data cache/ --max-drop 0.5 --out models/
      avemo-export runs/colearn --precision fp16 --out models/ --device 1 --workspace 2048
      avemo export runs/audio --out models-audio/
    """
    from avemo.export.exporter import export_run

    if opset < 17:
        raise click.BadParameter("LayerNormalization needs opset >= 17", param_hint="--opset")
    if precision == "int8" and data is None:
        raise click.BadParameter(
            "int8 is calibrated on training features: give --data CACHE (the cache the run trained on)",
            param_hint="--data",
        )
    wanted = EXPORT_PRECISIONS if precision in ("all", "int8") else (precision,)
    manifest = export_run(run, out, wanted, opset, not no_simplify, force, log=click.echo)
    sizes = manifest["sizes"]["fp32"]
    click.echo(
        f"wrote {out}: {', '.join(manifest['graphs'])} graphs; weights {sizes['bytes_written'] / 1e6:.2f} MB "
        f"(referenced {sizes['bytes_referenced'] / 1e6:.2f} MB across graphs)"
    )
    if precision == "all":
        click.echo(f"int8: run `avemo calibrate {out} --data CACHE` (calibration on MOSEI training features)")
    if precision == "int8":
        from avemo.calibration.cli import calibrate  # imported here: plain exports need no calibration code

        chosen = {"samples": samples} if samples else {}
        chosen |= {"max_drop": max_drop} if max_drop is not None else {}
        click.get_current_context().invoke(calibrate, models=out, data=data, **chosen)  # its defaults, its report
        engine_precision = "int8"
    else:
        engine_precision = "fp16" if "fp16" in manifest["precisions"] else "fp32"
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        click.echo(
            "TensorRT and pycuda do not both import here; build engines on the target device with: "
            f"avemo build {out} --precision {engine_precision}"
        )
        return
    from avemo.runtime.backends.build import build_engines
    from avemo.runtime.models.manifest import load_manifest

    build_engines(load_manifest(out), engine_precision, workspace, timing_cache, device_id, max_batch, click.echo)
