#!/usr/bin/env bash
# Type-check the TensorRT code against NVIDIA's published TensorRT 10.13 type stubs, so that a
# misspelt or removed TensorRT API fails CI on machines where TensorRT cannot be installed.
#
# The stubs are installed into a private folder, never into the venv: their `tensorrt/`
# directory would make `import tensorrt` succeed as an empty namespace package.
# Two fixes, measured (NOTES-toolchain.md): the generated stub has parameters named `in`
# and one non-default parameter after defaults (`add_scale_nd`), which are Python syntax errors.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STUBS=.venv/trt-stubs
if [ ! -f "$STUBS/tensorrt/__init__.pyi" ]; then
    rm -rf "$STUBS.tmp" "$STUBS"
    "$PY" -m pip install -q --no-deps --target "$STUBS.tmp" "tensorrt-stubs==10.13.0.35.1"
    mkdir -p "$STUBS"
    cp -r "$STUBS.tmp/tensorrt" "$STUBS.tmp/tensorrt_bindings" "$STUBS/"
    rm -rf "$STUBS.tmp"
    sed -i -E 's/([(,] *)in: /\1in_: /g; s/channel_axis: int\) -> IScaleLayer/channel_axis: int = ...) -> IScaleLayer/' \
        "$STUBS/tensorrt_bindings/tensorrt.pyi"
fi
MYPYPATH="$STUBS" "$PY" -m mypy --check-untyped-defs --ignore-missing-imports --follow-imports=silent \
    --disable-error-code=arg-type runtime/backends/trt.py runtime/backends/build.py runtime/backends/engines.py runtime/backends/gpu.py
