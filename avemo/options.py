"""Click options and checks shared by the commands of every side (runtime, training, export).

Torch-free and light: ``avemo.runtime.cli``, ``avemo.train.cli`` and ``avemo.calibration.export_cli`` import
them, so an option means the same in every command that takes it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from avemo.config import FeatureConfig
from avemo.contract import FACE_MODES


def face_options(command: click.Command) -> click.Command:
    """--face-detector and --faces, shared by `prepare` (training crops) and `infer` (serving crops)."""
    command = click.option(
        "--faces",
        type=click.Choice(FACE_MODES),
        default="speaker",
        show_default=True,
        help="With several faces in view: the one whose mouth moves with the audio (else the largest), "
        "or always the largest in each frame.",
    )(command)
    return click.option(
        "--face-detector",
        default=None,
        metavar="yunet|haar|PATH",
        help="Face detector: yunet (a CNN, packaged, the default), haar (OpenCV's cascade) or a YuNet ONNX "
        "file. prepare records it in the cache; infer uses the model's own and warns about any other.",
    )(command)


FRAME_SHIFT_S = FeatureConfig.frame_shift_ms / 1000  # the audio frame shift: the finest step a window moves by


def positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A finite number > 0 (or not given): inf and nan are refused too."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value:g}: expected a finite number > 0")
    return value


def hop_step(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A window hop: ``positive`` and at least one audio frame (a window per frame at most)."""
    value = positive(ctx, param, value)
    if value is not None and value < FRAME_SHIFT_S:
        raise click.BadParameter(f"{value:g} s is below one audio frame ({FRAME_SHIFT_S:g} s)")
    return value


def cores(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """A thread count from 1 to this machine's cores (or not given: all of them)."""
    if value is not None and not 1 <= value <= (os.cpu_count() or 1):
        raise click.BadParameter(f"{value}: expected 1 to {os.cpu_count()} (the cores here)")
    return value


def engine_build_options(command: click.Command) -> click.Command:
    """--workspace, --timing-cache, --device and --max-batch: every command that builds engines takes them."""
    for option in reversed(
        (
            click.option("--workspace", type=int, default=1024, show_default=True, help="Builder workspace in MB."),
            click.option(
                "--timing-cache",
                type=click.Path(path_type=Path, dir_okay=False),
                default=None,
                help="Timing cache file, read if present and written after the build.",
            ),
            click.option(
                "--device", "device_id", type=int, default=0, show_default=True, help="CUDA device to build on."
            ),
            click.option(
                "--max-batch",
                type=click.IntRange(min=1),
                default=None,
                help="Clips per call (default: 4 on a shared-memory GPU of 8 GiB or less, e.g. an Orin Nano; else 16).",
            ),
        )
    ):
        command = option(command)
    return command


def comma_list(kind: type, choices: tuple[str, ...] | None = None) -> Callable[[click.Context, Any, str], list]:
    """A click callback parsing 'a,b,c' (or 'all') into a list."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list:
        if choices and value == "all":
            return list(choices)
        try:
            items = [kind(v) for v in value.split(",") if v]
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected comma-separated {kind.__name__} values") from None
        bad = [v for v in items if choices and v not in choices]
        if bad or not items:
            raise click.BadParameter(f"{value!r}: choose from {', '.join(choices or ())} or all")
        return items

    return parse


def choices_option(
    flag: str, dest: str, default: str, choices: tuple[str, ...], what: str
) -> Callable[[click.Command], click.Command]:
    """A comma-separated multiple choice ('all' for every one)."""
    listed = f"{what}: {', '.join(choices)} (comma-separated) or all."
    return click.option(flag, dest, default=default, show_default=True, callback=comma_list(str, choices), help=listed)
