"""Placing a model's files in a Triton repository and replacing the repository's models atomically.

- Only the files the manifest lists (plus manifest.json and built TensorRT engines) are placed, each
  checked to lie inside the model folder (no absolute path, no ``..``, no symlink on the way).
- Files are copied, or reflinked where the file system can (btrfs, XFS: no second copy of the data);
  never hard-linked: ONNX refuses external data with more than one link ("hardlink attack"), so a
  hard link would make the model folder itself unloadable by ONNX tools.
- The new models are written into a staging folder beside the repository, then each model folder is
  swapped in with one atomic exchange of two paths (Linux ``renameat2(RENAME_EXCHANGE)``), so at
  every instant each model folder is the old one or the new one, complete. The old ones are deleted
  after. Leftover staging folders of killed runs are removed by the next run.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from avemo.errors import AvemoError

FICLONE = 0x40049409  # <linux/fs.h>: share the source's blocks (copy-on-write)
AT_FDCWD = -100
RENAME_EXCHANGE = 2  # <linux/fs.h>
STAGING = ".avemo-staging-"


def inside(root: Path, relative: str, what: str) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` without following a symlink."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise AvemoError(f"{root / 'manifest.json'}: {what} {relative!r} is not a path inside the model folder")
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise AvemoError(f"{path}: a symlink ({what}); the model folder must hold its files itself")
    if not path.is_file():
        raise AvemoError(f"{path}: missing ({what})")
    return path


def place(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (a reflink where the file system can); never a hard link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, target.open("wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return
        except OSError:  # not this file system (ext4, tmpfs, overlay) or another device
            pass
        shutil.copyfileobj(src, dst, 1 << 20)


def exchange(a: Path, b: Path) -> None:
    """Swap two paths in one step (renameat2 RENAME_EXCHANGE); where the kernel or file system cannot,
    three renames (then ``b`` is missing for an instant)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    aside = a.with_name(a.name + ".old")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def staging_for(out: Path) -> Path:
    """A new, empty staging folder beside ``out``, after removing those of runs no longer alive."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}{STAGING}*"):
        pid = stale.name.removeprefix(f".{out.name}{STAGING}").split("-")[0]
        if not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING}{os.getpid()}-", dir=out.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return pid != os.getpid()


def swap_in(staging: Path, out: Path, names: Iterable[str]) -> None:
    """Move the model folders ``names`` of ``staging`` into ``out``: a new ``out`` in one rename, else each
    folder exchanged with the old one (removed after, as are old ``names`` the new set lacks)."""
    if not out.exists():
        os.rename(staging, out)
        return
    names = list(names)
    for name in names:
        if (staging / name).exists():
            if (out / name).exists():
                exchange(staging / name, out / name)
            else:
                os.rename(staging / name, out / name)
        elif (out / name).exists():  # a model the new repository does not have (avemo_media)
            os.rename(out / name, staging / name)
    shutil.rmtree(staging)
