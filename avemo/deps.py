"""Lazy imports of optional heavy packages with a one-line install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from avemo.errors import AvemoError


def require(module: str, install: str) -> ModuleType:
    """Import ``module`` or raise a one-line error saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AvemoError(f"{module} is not installed ({exc}); install it with: {install}") from None
