"""`avemo profile` with its PyTorch eager baseline: the runtime's command, handed the torch runner.

The runtime never names this package (it must run where torch is absent), so the baseline comes in from
here, the first layer that holds both the graphs and the model. torch is imported only when the baseline
is profiled: `avemo profile --backend ort,trt` runs on a runtime-only install.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from avemo.runtime.backends import Backend
from avemo.runtime.profile.cli import profile as runtime_profile


def torch_baseline(checkpoint: Path, graph: str, threads: int | None) -> Backend:
    """PyTorch eager inference of ``graph`` from ``checkpoint`` (top-level: a fresh process is handed it too)."""
    from avemo.export.torch_runner import TorchRunner

    return TorchRunner(checkpoint, graph, threads)


assert runtime_profile.callback is not None
profile = click.Command(
    runtime_profile.name,
    params=runtime_profile.params,
    callback=functools.partial(runtime_profile.callback, baseline=torch_baseline),
    help=runtime_profile.help,
    short_help=runtime_profile.short_help,
    context_settings=runtime_profile.context_settings,
)
