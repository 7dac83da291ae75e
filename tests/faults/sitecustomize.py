"""Fault injector: put this folder on PYTHONPATH and choose a fault with environment variables.

- ``AVEMO_KILL_AFTER_RENAME=N``: SIGKILL this process right after its N-th rename. Counts os.rename,
  os.replace and avemo.io.exchange (renameat2), the real calls, each completed before the kill.
- ``AVEMO_FULL_DISK=GLOB``: a full disk for the files whose name (not folder) matches GLOB (fnmatch): they
  open, and from their N-th write on (``AVEMO_FULL_DISK_AFTER=N``, default 1: every write, counted over all
  matching files) each raw write raises OSError(ENOSPC) and writes nothing. Files opened with open(),
  io.open, os.fdopen and pathlib count (what Python, NumPy, Pillow and matplotlib write through).

The variables are removed at start, so child processes run unharmed.
"""

import os
import signal

_AFTER = int(os.environ.pop("AVEMO_KILL_AFTER_RENAME", "0"))
_FULL = os.environ.pop("AVEMO_FULL_DISK", "")
_FULL_AFTER = int(os.environ.pop("AVEMO_FULL_DISK_AFTER", "1"))

if _AFTER:
    _count = 0

    def _killing(call):
        def wrapped(*args, **kwargs):
            global _count
            result = call(*args, **kwargs)
            _count += 1
            if _count == _AFTER:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return wrapped

    os.rename, os.replace = _killing(os.rename), _killing(os.replace)
    import avemo.io

    avemo.io.exchange = _killing(avemo.io.exchange)

if _FULL:
    import builtins
    import errno
    import fnmatch
    import io

    _writes = 0
    _real_open = io.open

    class _FullFile(io.FileIO):
        def write(self, data):
            global _writes
            _writes += 1
            if _writes >= _FULL_AFTER:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write(2) says it: no file name
            return super().write(data)

    def _name(file):
        if isinstance(file, int):
            try:
                return os.readlink(f"/proc/self/fd/{file}")
            except OSError:
                return ""
        return os.fsdecode(os.fspath(file))

    def _open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
        writing = any(c in mode for c in "wax+")
        if not writing or not fnmatch.fnmatch(os.path.basename(_name(file)), _FULL):
            return _real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        raw = _FullFile(file, mode.replace("b", "").replace("t", ""), closefd, opener=opener)
        buffered = io.BufferedRandom(raw) if "+" in mode or "r" in mode else io.BufferedWriter(raw)
        if "b" in mode:
            return buffered
        return io.TextIOWrapper(buffered, encoding, errors, newline, line_buffering=buffering == 1)

    builtins.open = io.open = _open
