"""Small file helpers shared by every part: atomic writes (of files and of whole folders) and versioned JSON."""

from __future__ import annotations

import ctypes
import errno
import functools
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from avemo.errors import AvemoError

MAX_JSON_BYTES = 64 << 20  # manifests and caches' metadata are kilobytes; more is not ours
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the disk's fault, not the input's: no retry helps


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def cannot_write(path: Path, exc: OSError) -> AvemoError:
    """The one-line error for a write that failed (a full disk, a read-only or missing folder)."""
    return AvemoError(f"{path}: cannot write ({exc.strerror or exc})")


def read_versioned_json(path: Path, fmt: str, max_version: int, what: str, missing: str) -> dict[str, Any]:
    """Read a JSON file stamped with ``format`` and ``version``; one-line errors naming the file.

    ``missing`` is the message (hint included) for a file that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise AvemoError(missing)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise AvemoError(f"{path}: {path.stat().st_size} bytes is too large for a {what}")
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8; RecursionError: nesting
        raise AvemoError(f"{path}: unreadable {what} ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise AvemoError(f"{path}: not an avemo {what}")
    if not isinstance(data.get("version", 0), int):
        raise AvemoError(f"{path}: {what} version {data['version']!r} is not an integer")
    if data.get("version", 0) > max_version:
        raise AvemoError(f"{path}: {what} version {data['version']} is newer than this avemo ({max_version})")
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path (the manifest's ``files``)."""
    root = Path(root)
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


NEW_TREE, OLD_TREE = ".avemo-new-", ".avemo-old-"  # beside the folder they replace: .<name>.avemo-new-<pid>
RENAME_EXCHANGE = 2  # renameat2(2) flag (Linux 3.15+)
AT_FDCWD = -100


def new_tree(target: Path) -> Path:
    """An empty folder beside ``target`` (same file system) to build its replacement in; what killed runs
    left beside it is cleaned (or, after a kill mid-swap without an exchange, the old tree restored) first."""
    target = _real(target)
    recover_tree(target)
    path = target.parent / f".{target.name}{NEW_TREE}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _real(target: Path) -> Path:
    """A folder reached through a symlink is replaced where it is (the link stays, on its file system)."""
    return Path(target).resolve() if Path(target).is_symlink() else Path(target)


def recover_tree(target: Path) -> None:
    """Remove the trees that killed runs left beside ``target``; restore the old one if ``target`` is gone."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for kind in (OLD_TREE, NEW_TREE):
        for path in sorted(target.parent.glob(f".{glob.escape(target.name)}{kind}*")):
            pid = path.name.rpartition("-")[2]
            if pid.isdigit() and int(pid) != os.getpid() and alive(int(pid)):
                continue  # another run's, still working
            if kind == OLD_TREE and not target.exists():
                os.rename(path, target)  # killed between the two renames of the fallback swap
            else:
                shutil.rmtree(path, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    return True


def replace_tree(new: Path, target: Path) -> None:
    """Put the complete tree ``new`` at ``target``: at every instant ``target`` is the old tree or the new one,
    whole. One atomic exchange of the two names where the kernel and file system offer it, else two renames
    (a kill between them is repaired by the next ``new_tree``); the old tree is removed after."""
    new, target = Path(new), _real(target)
    if not target.exists():
        os.rename(new, target)
        return
    try:
        exchange(new, target)
        old = new
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
        old = target.parent / f".{target.name}{OLD_TREE}{os.getpid()}"
        os.rename(target, old)
        os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def exchange(a: Path, b: Path) -> None:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); OSError(ENOSYS) where unsupported."""
    call = getattr(_libc(), "renameat2", None)
    if call is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if call(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars turned into Python numbers and tuples into lists (for json.dumps)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
