"""Placing a model's files in a Triton repository and replacing the repository's models atomically.

- Only the files the manifest lists (plus manifest.json and built TensorRT engines) are placed, each
  checked to lie inside the model folder (no absolute path, no ``..``, no symlink on the way).
- Files are copied, or reflinked where the file system can (btrfs, XFS: no second copy of the data);
  never hard-linked: ONNX refuses external data with more than one link ("hardlink attack"), so a
  hard link would make the model folder itself unloadable by ONNX tools.
- The new models are written into a staging folder beside the repository, then each model folder is
  swapped in by ``avemo.io.replace_tree`` (one atomic exchange of two paths, Linux ``renameat2``,
  where the file system offers it), so at every instant each model folder is the old one or the new
  one, complete; the old ones are deleted after. Staging folders of killed runs go with the next run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from avemo.errors import AvemoError
from avemo.io import alive, replace_tree

FICLONE = 0x40049409  # <linux/fs.h>: share the source's blocks (copy-on-write)
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


def staging_for(out: Path) -> Path:
    """A new, empty staging folder beside ``out``, after removing those of runs no longer alive."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}{STAGING}*"):
        pid = stale.name.removeprefix(f".{out.name}{STAGING}").split("-")[0]
        if not (pid.isdigit() and pid != str(os.getpid()) and alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING}{os.getpid()}-", dir=out.parent))


def swap_in(staging: Path, out: Path, names: Iterable[str]) -> None:
    """Move the model folders ``names`` of ``staging`` into ``out``: a new ``out`` in one rename, else each
    folder exchanged with the old one (removed after, as are old ``names`` the new set lacks)."""
    if not out.exists():
        os.rename(staging, out)
        return
    names = list(names)
    for name in names:
        if (staging / name).exists():
            replace_tree(staging / name, out / name)  # one atomic exchange where the file system offers it
        elif (out / name).exists():  # a model the new repository does not have (avemo_media)
            os.rename(out / name, staging / name)
    shutil.rmtree(staging)
