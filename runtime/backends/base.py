"""The one interface every backend keeps, and the one check of what is handed to it.

A backend runs one graph: ``infer({input name: array}) -> probs [B, 6]``, or a batch written once where it
reads it (``staging``: TensorRT's page-locked buffers, no copy in between). It knows its inputs
(``input_specs``: name, dtype, rank and, for a TensorRT engine, the profile's range per axis), checks
what it is given with ``check_inputs`` before any work, releases what it holds on ``close()`` (or at the
end of a ``with``) and refuses to run after it. ONNX Runtime, TensorRT and ONNX's reference evaluator
(fp16 honoured) are the three kinds; ``avemo.runtime.backends.open_backend`` makes each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from avemo.contract import FACES, FACES_SCALE, LENGTHS_OF
from avemo.errors import AvemoError

Shape = tuple[int, ...]
_KINDS = {"i": "integer", "u": "integer", "f": "float", "b": "bool"}  # numpy dtype kinds a cast may join


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, dtype and shape (an int per fixed axis, None per dynamic one);
    ``low``/``high``: the smallest and largest shape an engine profile takes (None: any size, as ONNX
    Runtime's dynamic axes)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    low: Shape | None = None
    high: Shape | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)


def fixed_axes(shape: list[Any] | tuple[Any, ...]) -> tuple[int | None, ...]:
    """A graph's declared shape (named or unknown dynamic axes, int fixed ones) as InputSpec wants it."""
    return tuple(d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in shape)


class Staged:
    """A batch being written where its backend reads it: fill ``arrays`` (every element: ``write_padded``
    rows), then ``run()`` once."""

    def __init__(self, arrays: dict[str, np.ndarray], run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> None:
        self.arrays, self._run = arrays, run

    def run(self) -> np.ndarray:
        return self._run(self.arrays)


def write_padded(out: np.ndarray, data: np.ndarray) -> None:
    """``data`` into the leading corner of ``out`` and zeros in the rest: each element of ``out`` written once."""
    out[tuple(slice(0, n) for n in data.shape)] = data
    for axis, n in enumerate(data.shape):
        if n < out.shape[axis]:
            out[(*(slice(0, m) for m in data.shape[:axis]), slice(n, None))] = 0


@runtime_checkable
class Backend(Protocol):
    """What the Recognizer, the profiler, parity and calibration need of a graph runner."""

    path: Path
    kind: str  # "onnxruntime", "tensorrt" or "onnx-reference": what reports name as the runner
    input_specs: tuple[InputSpec, ...]

    @property
    def input_names(self) -> list[str]: ...

    def infer(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def staging(self, shapes: Mapping[str, Shape]) -> AbstractContextManager[Staged]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


class BackendBase:
    """Shared by the backends: names from the specs, ``with``, and a closed backend that refuses to run."""

    path: Path
    input_specs: tuple[InputSpec, ...] = ()
    closed: bool = False

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.input_specs]

    def checked(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.refuse_closed()
        return check_inputs(inputs, self.input_specs, self.path.name)

    @contextmanager
    def staging(self, shapes: Mapping[str, Shape]) -> Iterator[Staged]:
        """Arrays of at least ``shapes`` (the inputs' dtypes, not cleared) to write a batch into, and its run.
        Here plain arrays of exactly those shapes, run by ``infer``; TensorRT hands out its page-locked buffers,
        padded to a length bucket."""
        self.refuse_closed()
        yield Staged({s.name: np.empty(shapes[s.name], s.dtype) for s in self.input_specs}, self.infer)

    def refuse_closed(self) -> None:
        if self.closed:
            raise AvemoError(f"{self.path.name}: the backend is closed")

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_inputs(
    inputs: Mapping[str, np.ndarray], specs: tuple[InputSpec, ...], where: str, finite: bool = False
) -> dict[str, np.ndarray]:
    """The inputs as the graph takes them (its dtypes, C-contiguous), or one AvemoError naming the problem:
    a missing input, a dtype of another kind (float for int: float faces for a uint8 graph), a wrong rank,
    batch sizes that disagree, a length outside 1..frames of its data, a shape beyond the profile's maximum
    and, with ``finite``, NaN or Inf. Extra inputs are ignored (a batch may carry both modalities into a
    one-modality graph). uint8 faces for a graph that takes float faces (exported before graphs took uint8)
    are scaled to [0, 1] here."""
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise AvemoError(f"{where}: missing inputs {missing}")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        given = np.asarray(inputs[spec.name])
        if spec.name == FACES:
            given = faces_for(given, spec.dtype)
        if _KINDS.get(given.dtype.kind) != _KINDS.get(spec.dtype.kind):
            raise AvemoError(f"{where}: {spec.name} is {given.dtype}, the graph takes {spec.dtype}")
        if given.ndim != spec.rank:
            raise AvemoError(f"{where}: {spec.name} has {given.ndim} dimensions, the graph takes {spec.rank}")
        if len(given) == 0:
            raise AvemoError(f"{where}: {spec.name} holds no clips (an empty batch)")
        wrong = [(axis, n, d) for axis, (n, d) in enumerate(zip(given.shape, spec.shape, strict=True)) if d and n != d]
        if wrong:
            axis, n, d = wrong[0]
            raise AvemoError(f"{where}: {spec.name} has {n} on axis {axis}, the graph takes {d}")
        check_profile(spec, given.shape, where)
        with np.errstate(over="ignore"):  # cast first: a float64 too large for float32 becomes Inf, found below
            array = np.ascontiguousarray(given, dtype=spec.dtype)
        if finite and array.dtype.kind == "f" and not (rows := np.isfinite(array).reshape(len(array), -1).all(1)).all():
            raise AvemoError(f"{where}: {spec.name} holds NaN or Inf (clips {np.flatnonzero(~rows).tolist()})")
        out[spec.name] = array
    batches = {name: len(array) for name, array in out.items()}
    if len(set(batches.values())) > 1:
        raise AvemoError(f"{where}: inputs disagree on the batch size: {batches}")
    for data, lengths in LENGTHS_OF.items():
        if lengths in out and data in out:
            frames = out[data].shape[1]
            if (out[lengths] < 1).any() or (out[lengths] > frames).any():
                raise AvemoError(
                    f"{where}: {lengths} {out[lengths].tolist()} must lie in 1..{frames} (the frames in {data})"
                )
    return out


def faces_for(faces: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """uint8 faces as a graph that takes ``dtype`` wants them: as they are, or for a graph exported before
    uint8 faces (float), scaled to [0, 1] on the host, as the new graphs' first nodes do. Others unchanged."""
    if np.dtype(dtype).kind == "f" and faces.dtype == np.uint8:
        return faces / np.float32(FACES_SCALE)
    return faces


def check_profile(spec: InputSpec, shape: Shape, where: str) -> None:
    """Refuse a shape beyond the engine profile's maximum (nothing to check without one), saying what to do."""
    if spec.high is None:
        return
    for axis, (n, high) in enumerate(zip(shape, spec.high, strict=True)):
        if n > high:
            what, hint = (
                ("clips per batch", "call with fewer clips")
                if axis == 0
                else ("frames", "recognise long media in windows (--window)")
            )
            raise AvemoError(f"{where}: {spec.name}: {n} {what}, more than the engine's profile takes ({high}); {hint}")
