"""Child processes that die with their parent: a parent-death signal (Linux ``prctl``), a no-op elsewhere.

Used by every part that starts processes: ``avemo prepare``'s workers and ``avemo calibrate``'s quantizer
(``child_pool``) and the Triton server (``die_with_parent`` as Popen's ``preexec_fn``), so that a parent
killed by SIGKILL or SIGTERM leaves no orphan working on.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when ``parent`` ends (even by SIGKILL); exit now if it
    already has. Call it in the child: as Popen's ``preexec_fn`` or a pool's initializer. The signal comes
    when the *thread* that started the child ends, so start children from a thread that outlives them."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _init_child(parent: int, initializer: Callable[..., object] | None, *args: Any) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*args)


def child_pool(
    workers: int, initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of spawned processes (not forked: forking a process whose OpenCV/FFmpeg/ONNX Runtime thread
    pools already ran can deadlock) that end with this one. Submit from the thread that will wait for them."""
    return ProcessPoolExecutor(
        workers,
        multiprocessing.get_context("spawn"),
        initializer=_init_child,
        initargs=(os.getpid(), initializer, *initargs),
    )


def children(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``, from /proc ([] where there is no /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        if int(ppid) == pid and state != "Z":  # a zombie is dead, only not yet reaped
            found.append(int(stat.parent.name))
    return sorted(found)


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (from /proc; where there is none, whether it exists)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def descendants(pid: int) -> list[int]:
    """The live children of ``pid``, theirs, and so on (from /proc)."""
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return sorted(found)
