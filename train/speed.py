"""How the training loop runs on its device, apart from what it computes: mixed precision (torch.autocast),
the CNN's memory format, DataLoader workers and pinned memory. None of it is part of a run's settings: a run
resumes under other choices (like another process count)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from avemo.config import PRECISIONS
from avemo.errors import AvemoError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoopOptions:
    """`avemo train`'s --workers, --precision, --channels-last and --pin-memory (docs/TRAINING.md, "Speed")."""

    workers: int = 0
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp16 with a scaler; fp32 on CPU
    channels_last: bool = False  # slower on an H200 (docs/bench/h200-shape-probe.txt), in the noise on our CPU
    pin_memory: bool = False  # CUDA only; not measured yet


@dataclass(frozen=True)
class Precision:
    """The autocast region of a training step (``dtype`` None: plain fp32) and the loss scaling it needs."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler:
        """fp16's narrow range underflows small gradients unless the loss is scaled; bf16 and fp32 need no
        scaling (a disabled scaler passes the loss and the optimiser step through unchanged)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


def resolve_precision(choice: str, device: torch.device, bf16_supported: Callable[[], bool] | None = None) -> Precision:
    """--precision on ``device``: ``auto`` is fp32 on CPU, and on CUDA bf16 where ``bf16_supported()`` (default
    torch.cuda.is_bf16_supported; a test injects the GPU's answer), else fp16 with a gradient scaler."""
    if choice not in PRECISIONS:
        raise AvemoError(f"unknown --precision {choice!r}; expected one of {', '.join(PRECISIONS)}")
    has_bf16 = bf16_supported or torch.cuda.is_bf16_supported
    if choice == "auto":
        if device.type != "cuda":
            return Precision(device.type)
        choice = "bf16" if has_bf16() else "fp16"
    if choice == "bf16" and device.type == "cuda" and not has_bf16():
        raise AvemoError("--precision bf16: this GPU has no bf16; use fp16 (scaled) or auto")
    return Precision(device.type, AUTOCAST_DTYPES.get(choice))
