"""A one-line description of the machine, stamped on every result and benchmark."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    python = sys.version.split()[0]
    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {python}"
