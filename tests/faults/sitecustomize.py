"""Fault injector: with AVEMO_KILL_AFTER_RENAME=N, SIGKILL this process right after its N-th rename.

Put this folder on PYTHONPATH. Counts os.rename, os.replace and avemo.io.exchange (renameat2), the
real calls, each completed before the kill. The variable is removed at start, so child processes
run unharmed.
"""

import os
import signal

_AFTER = int(os.environ.pop("AVEMO_KILL_AFTER_RENAME", "0"))

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
