"""avemo/process.py: children that die with their parent, and the /proc readers the tests use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from avemo.process import children, descendants, running

PARENT = """
import functools, os, subprocess, sys, time
from avemo.process import child_pool, die_with_parent
popen = subprocess.Popen(["sleep", "60"], preexec_fn=functools.partial(die_with_parent, os.getpid()))
pool = child_pool(1)
pool.submit(time.sleep, 60)
print(popen.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_children_die_with_a_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        sleeper = int(parent.stdout.readline())  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while len(children(parent.pid)) < 3:  # sleep, the pool's worker, multiprocessing's resource tracker
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = descendants(parent.pid)
        assert sleeper in started and set(children(parent.pid)) <= set(started)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in started if running(pid)]
        for pid in left:  # no litter from a failing test
            os.kill(pid, signal.SIGKILL)
        assert not left
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_running_knows_the_living_from_the_dead():
    assert running(os.getpid())
    done = subprocess.Popen(["true"])
    while running(done.pid):  # a zombie until reaped: not running
        time.sleep(0.01)
    done.wait()
    assert not running(done.pid)
