"""The ``avemo`` command group.

Subcommands are imported only when run, so ``avemo --help`` stays instant and
the torch-free runtime commands never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from avemo import __version__
from avemo.errors import AvemoError
from avemo.io import DISK_ERRORS, cannot_write

# name -> (module, attribute, one-line help shown by `avemo --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "prepare": ("avemo.train.cli", "prepare", "Extract CMU-MOSEI features into a cache (resumable)."),
    "synth": ("avemo.train.cli", "synth", "Write a seeded synthetic feature cache."),
    "train": ("avemo.train.cli", "train", "Train a model in one of the paper's regimes."),
    "calibrate": (
        "avemo.calibration.cli",
        "calibrate",
        "INT8 graphs (Q/DQ) calibrated on training features, accuracy report.",
    ),
    "doctor": (
        "avemo.runtime.cli",
        "doctor",
        "First check on a new device: environment, parity, engines vs ONNX Runtime, memory.",
    ),
    "build": ("avemo.runtime.cli", "build", "Build TensorRT engines on the device (needs tensorrt + pycuda)."),
    "eval": ("avemo.train.study_cli", "evaluate", "Table-2 report (wF1/mF1 per emotion) for runs."),
    "study": (
        "avemo.train.study_cli",
        "study",
        "Multi-seed study of the paper's claims: train, evaluate, aggregate, judge.",
    ),
    "export": ("avemo.calibration.export_cli", "export", "ONNX graphs (A, V, A+V) with shared weights and a manifest."),
    "export-triton": (
        "avemo.runtime.serving.cli",
        "export_triton",
        "A Triton Inference Server model repository (A, V, A+V; + media in with --backend python).",
    ),
    "triton-serve": (
        "avemo.runtime.serving.cli",
        "triton_serve",
        "Serve a Triton repository here (tritonserver of the nvidia-pytriton wheel).",
    ),
    "infer": ("avemo.runtime.cli", "infer", "Recognise emotions in media files (JSON lines; A, V or A+V per clip)."),
    "sample": ("avemo.runtime.media.sample", "sample", "Write a synthetic talking-face clip to try `avemo infer` on."),
    "profile": (
        "avemo.export.profile_cli",
        "profile",
        "Latency p50/p90/p99, throughput, RTF per backend/precision/shape.",
    ),
    "verify": ("avemo.runtime.cli", "verify", "Re-hash an exported model directory and re-run its parity checks."),
}


def friendly(command: click.Command) -> click.Command:
    """Show AvemoError (bad input) and a full disk (or quota, or a read-only file system) as a one-line
    message instead of a traceback; the atomic writers (avemo.io) leave no half-written file behind."""
    if getattr(command, "_avemo_friendly", False):
        return command
    invoke = command.invoke

    def guarded(ctx: click.Context) -> Any:
        try:
            return invoke(ctx)
        except AvemoError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if exc.errno not in DISK_ERRORS:
                raise
            raise click.ClickException(str(cannot_write(exc.filename or "", exc)).lstrip(": ")) from None

    command.invoke = guarded  # type: ignore[method-assign]
    command._avemo_friendly = True  # type: ignore[attr-defined]
    return command


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        return friendly(getattr(importlib.import_module(module), attr))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


@click.group(cls=LazyGroup, context_settings=HELP_OPTIONS)
@click.version_option(__version__, prog_name="avemo")
def main() -> None:
    """avemo: audio-visual emotion recognition (Takashima et al., Interspeech 2022).

    \b
    Typical flow:
      avemo synth --preset tiny --out cache/          # or: avemo prepare (real MOSEI)
      avemo train --data cache/ --regime colearn --out runs/colearn
      avemo eval runs/colearn --split test
      avemo export runs/colearn --precision fp16 --out models/
      avemo calibrate models/ --data cache/           # int8
      avemo infer clip.mp4 --models models/
      avemo profile models/ --backend torch,ort
    """


def export_main() -> None:
    """The `avemo-export` console script: the same command as `avemo export`."""
    command = main.get_command(click.Context(main), "export")
    command.main(prog_name="avemo-export", **HELP_OPTIONS)
