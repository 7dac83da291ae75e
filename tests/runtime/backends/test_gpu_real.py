"""runtime/backends/gpu.py against a real CUDA driver through the real pycuda (no TensorRT needed).

Skipped, with the reason, where pycuda does not import or no GPU answers (every CI machine).
Everything else in the GPU runtime is tested through the doubles in tests/fakes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from avemo.errors import AvemoError


def _why_no_gpu() -> str | None:
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda is not installed (no GPU on this machine)"
    try:
        import pycuda.driver as cuda

        cuda.init()
        return None if cuda.Device.count() else "pycuda imports but sees no CUDA device"
    except Exception as exc:  # no driver library, driver too old, ...
        return f"pycuda imports but no GPU answers: {exc}"


NO_GPU = _why_no_gpu()
pytestmark = pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))


@pytest.fixture
def cuda():
    from avemo.runtime.backends.gpu import driver

    module = driver()
    assert "fakes" not in (module.__file__ or ""), "the pycuda double is loaded: run this file on its own"
    return module


def test_gpu_info_matches_the_driver(cuda):
    from avemo.runtime.backends.gpu import active, gpu_info

    info = gpu_info(0)
    assert info.name and info.compute_capability >= (5, 0) and isinstance(info.integrated, bool)
    with active(0):
        free, total = cuda.mem_get_info()
    assert total == info.total_memory and 0 < free <= total
    count = cuda.Device.count()
    with pytest.raises(AvemoError, match=rf"--device {count}: this machine has {count} CUDA device"):
        gpu_info(count)


def test_primary_context_is_retained_once_and_current_inside_active(cuda):
    from avemo.runtime.backends.gpu import active, gpu_info, primary_context

    context = primary_context(0)
    assert primary_context(0) is context
    with active(0), active(0):  # nested, as a backend inside the Recognizer's own block
        assert cuda.Context.get_device().name() == gpu_info(0).name
    with pytest.raises(cuda.LogicError):  # popped again: nothing is current in this thread
        cuda.Context.get_device()


@pytest.mark.parametrize("mapped", [False, True], ids=["device-copy", "mapped-host"])
def test_io_buffers_round_trip_through_the_device_with_event_timing(cuda, mapped):
    """Stage -> H2D -> a device-side copy (standing in for the engine) -> D2H, timed by CUDA events
    as TrtBackend.infer does. mapped=True is the Jetson path; discrete GPUs map host memory too (UVA)."""
    from avemo.runtime.backends.gpu import IOBuffer, active

    x = np.random.default_rng(0).standard_normal((3, 5000)).astype(np.float32)
    with active(0):
        stream = cuda.Stream()
        events = [cuda.Event() for _ in range(3)]
        source, target = (IOBuffer(x.nbytes + 64, np.float32, mapped) for _ in range(2))
        assert source.device_bytes == (0 if mapped else x.nbytes + 64)
        staged = source.stage(x)
        events[0].record(stream)
        source.to_device(staged, stream)
        cuda.memcpy_dtod_async(target.address, source.address, x.nbytes, stream)
        events[1].record(stream)
        out = target.from_device(x.size, stream)
        events[2].record(stream)
        stream.synchronize()
        np.testing.assert_array_equal(out.reshape(x.shape), x)
        assert events[0].time_till(events[1]) > 0 and events[1].time_till(events[2]) >= 0
        for buffer in (source, target):
            buffer.free()
            assert buffer.host is None and buffer.device is None


def test_device_scratch_grows_for_every_user_and_frees_with_the_last(cuda):
    from avemo.runtime.backends.gpu import DeviceScratch, active

    calls: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
    scratch = DeviceScratch(0)
    mib = 1 << 20
    with active(0):
        free_before = cuda.mem_get_info()[0]
        scratch.reserve(16 * mib, lambda a, s: calls["a"].append((a, s)))
        attach_b = lambda a, s: calls["b"].append((a, s))  # noqa: E731
        scratch.reserve(256 * mib, attach_b)
        assert calls["a"][-1] == calls["b"][-1] == (int(scratch.allocation), 256 * mib)
        assert len(calls["a"]) == 2  # told of the first allocation, then of the grown one
        cuda.memset_d8(calls["b"][-1][0], 7, 256 * mib)  # the whole range is really ours
        tail = np.empty(16, np.uint8)
        cuda.memcpy_dtoh(tail, calls["b"][-1][0] + 256 * mib - 16)
        assert (tail == 7).all()
        assert cuda.mem_get_info()[0] <= free_before - 200 * mib
        scratch.release(attach_b)
        assert scratch.allocation is not None  # "a" still uses it
        scratch.release(scratch.users[0])
        assert scratch.allocation is None and scratch.size == 0
        assert cuda.mem_get_info()[0] >= free_before - 32 * mib


def test_buffers_closed_at_exit_before_the_context_goes():
    """A process that exits with a registered backend still open: closed first, then the context;
    pycuda reports any free that ran after its context was gone ("clean-up operation failed")."""
    code = textwrap.dedent(
        """
        import numpy as np
        from avemo.runtime.backends.gpu import IOBuffer, active, close_at_exit

        class Backend:
            def __init__(self):
                with active(0):
                    self.buffer = IOBuffer(1 << 20, np.float32, mapped=False)
            def close(self):
                with active(0):
                    self.buffer.free()
                print("closed", flush=True)

        keep = Backend()
        close_at_exit(keep)
        print("exiting", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["exiting", "closed"]
    assert "clean-up operation failed" not in done.stderr and "PyCUDA WARNING" not in done.stderr
