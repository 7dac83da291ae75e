#!/usr/bin/env python3
"""`avemo profile` as a script, for devices where only the runtime is installed (pip install 'avemo[runtime]').

Same engine and options as `avemo profile` (see --help). The PyTorch baseline
needs avemo[train]; on a runtime-only device pass e.g. --backend ort,trt.

    python scripts/profile_latency.py models/ --backend ort,trt --precision fp16,int8 --out bench/
"""

from avemo.cli import friendly
from avemo.export.profile_cli import profile  # the runtime's command with the PyTorch baseline (torch is lazy)

if __name__ == "__main__":
    friendly(profile)(prog_name="profile_latency.py")
