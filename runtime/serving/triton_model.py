"""Triton Python-backend models (`avemo export-triton --backend python`): thin classes over avemo's runtime.

Each repository model's ``1/model.py`` only imports one of these as
``TritonPythonModel``; the models directory (manifest, graphs, shared weights,
engines) sits beside it in ``1/models/``. Parameters in ``config.pbtxt``:
``AVEMO_PRECISION`` (fp32 | fp16 | int8 | int8-cpu), ``AVEMO_BACKEND``
(ort | trt | auto), ``AVEMO_THREADS`` (0: ONNX Runtime's default),
``AVEMO_MAX_SECONDS`` (avemo_media: longer media is refused; default 600).

- ``GraphModel`` (avemo_a, avemo_v, avemo_av): the graph's own inputs and
  ``probs``; the requests Triton's dynamic batcher hands over in one call are
  zero-padded to a common length and run as one batch (the length inputs make
  padding exact), then split again.
- ``MediaModel`` (avemo_media): an encoded clip in (``media``: its bytes, any
  container PyAV reads, as a UINT8 tensor); ``probs`` [6], ``modality`` (a, v
  or av), ``notes`` (a JSON list) and ``result`` (the JSON that `avemo infer`
  prints) out, the text outputs as UTF-8 bytes in UINT8 tensors.

Tensors cross into and out of Triton through DLPack (``np.from_dlpack``,
``Tensor.from_dlpack``), never through ``as_numpy()`` / ``Tensor(name,
ndarray)``: the Python backend of the nvidia-pytriton 0.7.0 wheel reads numpy
arrays with numpy 1's struct layout, and with numpy 2 in the model's
environment inputs arrive with zero strides (every element equal to the
first), outputs arrive empty, and a BYTES input kills the stub (measured).
DLPack carries no strings, hence UINT8 for bytes and text.

A request that cannot be served (wrong shapes, lengths out of range, NaN or
Inf values, corrupt or too long media) gets a Triton error naming the problem;
the model stays up for the next.
``triton_python_backend_utils`` exists only inside Triton's Python stub, so it
is imported when Triton starts the model.
"""

from __future__ import annotations

import ctypes
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from avemo.contract import GRAPH_INPUTS, LENGTHS_OF, PROBS
from avemo.errors import AvemoError
from avemo.runtime.backends.base import InputSpec, check_inputs
from avemo.runtime.batch import result_line

MODELS_DIR = "models"  # in each model's version folder
MEDIA_INPUT = "media"  # UINT8 [-1]: the encoded clip's bytes
MEDIA_OUTPUTS = ("probs", "modality", "notes", "result")
MAX_SECONDS = "AVEMO_MAX_SECONDS"  # avemo_media's limit on a request's media duration (config parameter)
DEFAULT_MAX_SECONDS = 600.0
FAILURE_METRIC = "avemo_request_failure"  # Prometheus counter of the requests answered with an error
_USED_DLTENSOR = ctypes.c_char_p(b"used_dltensor")  # module-level: a capsule keeps the pointer, not a copy
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _settings(args: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    """The models folder beside model.py and the config's string parameters."""
    config = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    return Path(args["model_repository"]) / args["model_version"] / MODELS_DIR, params


def _threads(params: dict[str, str]) -> int | None:
    return int(params.get("AVEMO_THREADS") or 0) or None


class _Failures:
    """Requests answered with an error, counted in Prometheus as ``avemo_request_failure{model, code}``.

    Triton's own ``nv_inference_request_failure`` and ``/v2/models/M/stats`` count them as
    successes: the Python backend (r24.10 to r25.10) reports a request as failed only when
    ``execute`` raises, which fails every request of the batch with INTERNAL. Per-request
    error responses keep INVALID_ARG and the batch's good requests, so they are counted here.
    """

    CODES = ("INVALID_ARG", "INTERNAL")

    def __init__(self, model: str) -> None:
        import triton_python_backend_utils as pb_utils

        self.family = pb_utils.MetricFamily(
            name=FAILURE_METRIC,
            description="avemo requests answered with an error, by Triton error code",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.metrics = {code: self.family.Metric(labels={"model": model, "code": code}) for code in self.CODES}

    def response(self, pb_utils: Any, message: str, bad_input: bool = True) -> Any:
        """An error response (INVALID_ARG for a bad request, else INTERNAL), counted."""
        code = self.CODES[0] if bad_input else self.CODES[1]
        self.metrics[code].increment(1)
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code))
        )

    def close(self) -> None:
        self.metrics.clear()  # the Metric objects go before their family (the backend's rule)
        del self.family


def _input(pb_utils: Any, request: Any, name: str) -> np.ndarray | None:
    """A request's input as numpy through DLPack (numpy 1 and 2 alike), or None when not sent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.from_dlpack(tensor)


def _tensor(pb_utils: Any, name: str, value: np.ndarray | str) -> Any:
    """An output tensor through DLPack (numpy 1 and 2 alike); text as UTF-8 bytes in a UINT8 tensor.

    The Python backend marks a consumed capsule "used_dlpack" where the DLPack protocol says
    "used_dltensor": numpy's capsule destructor then fails to read it and prints a traceback
    (`PyCapsule_GetPointer called with incorrect name`) per output. The tensor owns the data
    either way; renaming the capsule as the protocol says lets numpy's destructor skip it.
    """
    array = np.frombuffer(value.encode(), np.uint8) if isinstance(value, str) else value
    capsule = np.array(array, copy=True, order="C").__dlpack__()  # writable, contiguous
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(ctypes.py_object(capsule), _USED_DLTENSOR)
    return tensor


def check_request(inputs: dict[str, np.ndarray], specs: tuple[InputSpec, ...]) -> int:
    """Batch size of one request's graph inputs; AvemoError naming what is wrong (``check_inputs``, NaN too:
    one bad request must not poison the batch it would join)."""
    return len(next(iter(check_inputs(inputs, specs, "request", finite=True).values())))


def merge_requests(requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One batch of several requests' inputs: time axes zero-padded to the longest, batches concatenated."""
    merged = {}
    for name in requests[0]:
        arrays = [r[name] for r in requests]
        if name in LENGTHS_OF:
            longest = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, [(0, 0), (0, longest - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays]
        merged[name] = np.concatenate(arrays)
    return merged


class GraphModel:
    """avemo_a / avemo_v / avemo_av: one exported graph behind Triton's dynamic batcher."""

    def initialize(self, args: dict[str, Any]) -> None:
        from avemo.runtime.backends import open_backend, resolve_backend
        from avemo.runtime.models.manifest import load_manifest

        models, params = _settings(args)
        self.modality = args["model_name"].removeprefix("avemo_")
        manifest = load_manifest(models)
        backend, precision, _ = resolve_backend(
            params.get("AVEMO_BACKEND", "ort"), manifest, params.get("AVEMO_PRECISION") or None
        )
        self.graph = open_backend(  # graphs alone: avemo_media, which decodes, has its own Recognizer
            manifest, self.modality, precision, backend, _threads(params), workload="inference"
        )
        self.names = GRAPH_INPUTS[self.modality]
        self.failures = _Failures(args["model_name"])

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray], int]] = []
        for i, request in enumerate(requests):
            inputs = {name: x for name in self.names if (x := _input(pb_utils, request, name)) is not None}
            try:
                good.append((i, inputs, check_request(inputs, self.graph.input_specs)))
            except AvemoError as exc:
                responses[i] = self.failures.response(pb_utils, f"avemo_{self.modality}: {exc}")
        if good:
            try:
                probs = self.graph.infer(merge_requests([inputs for _, inputs, _ in good]))
            except Exception as exc:  # a failed batch fails its requests, never the model
                for i, _, _ in good:
                    message = f"avemo_{self.modality}: {type(exc).__name__}: {exc}"
                    responses[i] = self.failures.response(pb_utils, message, isinstance(exc, AvemoError))
            else:
                offset = 0
                for i, _, size in good:
                    out = _tensor(pb_utils, PROBS, probs[offset : offset + size].astype(np.float32))
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
                    offset += size
        return responses

    def finalize(self) -> None:
        self.graph.close()  # every backend closes (TensorRT: its engine and buffers)
        self.failures.close()


class MediaModel:
    """avemo_media: encoded clip bytes in, emotions out, through the Recognizer's whole pipeline."""

    def initialize(self, args: dict[str, Any]) -> None:
        from avemo.runtime.recognizer import Recognizer

        models, params = _settings(args)
        self.recognizer = Recognizer(
            models,
            precision=params.get("AVEMO_PRECISION") or None,
            threads=_threads(params),
            backend=params.get("AVEMO_BACKEND", "ort"),
            faces=params.get("AVEMO_FACES", "speaker"),
        )
        self.scratch = tempfile.TemporaryDirectory(prefix="avemo-media-")
        self.max_seconds = float(params.get(MAX_SECONDS) or DEFAULT_MAX_SECONDS)
        self.failures = _Failures(args["model_name"])

    def recognize(self, data: bytes) -> dict[str, Any]:
        """The `avemo infer` JSON of one encoded clip of at most ``max_seconds``."""
        from avemo.runtime.media.decode import media_duration

        if not data:
            raise AvemoError("empty media: send the bytes of an encoded clip (mp4, mkv, wav, ...)")
        with tempfile.NamedTemporaryFile(dir=self.scratch.name, suffix=".clip") as file:
            file.write(data)
            file.flush()
            path = Path(file.name)
            try:
                if (seconds := media_duration(path)) > self.max_seconds:
                    raise AvemoError(
                        f"the request's media lasts {seconds:.1f} s, over this server's limit of "
                        f"{self.max_seconds:g} s ({MAX_SECONDS}); send it in shorter pieces"
                    )
                started = time.perf_counter()
                # decoding stops at the limit too, whatever length the file claims
                _, feats = self.recognizer.prepare(path, 0.0, self.max_seconds)
                ms = 1000 * (time.perf_counter() - started)
                recognition = self.recognizer.recognize_features(feats, "request", (None, None), ms)
                result = result_line(recognition)  # as `avemo infer` writes it
            except AvemoError as exc:  # name the request, not our scratch file
                raise AvemoError(str(exc).replace(file.name, "the request's media")) from None
        return result

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        from avemo.contract import LABELS

        responses = []
        for request in requests:
            try:
                result = self.recognize(_input(pb_utils, request, MEDIA_INPUT).tobytes())
            except Exception as exc:  # AvemoError: bad media; anything else: say what, keep serving
                bad = isinstance(exc, AvemoError)
                message = f"avemo_media: {'' if bad else type(exc).__name__ + ': '}{exc}"
                responses.append(self.failures.response(pb_utils, message, bad))
                continue
            values = {
                "probs": np.array([result["probs"][k] for k in LABELS], np.float32),
                "modality": result["modality"],
                "notes": json.dumps(result["notes"]),
                "result": json.dumps(result),
            }
            outputs = [_tensor(pb_utils, name, values[name]) for name in MEDIA_OUTPUTS]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def finalize(self) -> None:
        self.recognizer.close()
        self.scratch.cleanup()
        self.failures.close()
