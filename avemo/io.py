"""Small file helpers shared by every part: atomic writes and versioned JSON files."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from avemo.errors import AvemoError


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_versioned_json(path: Path, fmt: str, max_version: int, what: str, missing: str) -> dict[str, Any]:
    """Read a JSON file stamped with ``format`` and ``version``; one-line errors naming the file.

    ``missing`` is the message (hint included) for a file that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise AvemoError(missing)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AvemoError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise AvemoError(f"{path}: not an avemo {what}")
    if data.get("version", 0) > max_version:
        raise AvemoError(f"{path}: {what} version {data['version']} is newer than this avemo ({max_version})")
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def move_into_place(staging: Path, out: Path) -> dict[str, str]:
    """Rename every staged file into ``out``; returns their sha256 by relative path."""
    files: dict[str, str] = {}
    for path in sorted(p for p in Path(staging).rglob("*") if p.is_file()):
        rel = path.relative_to(staging)
        target = Path(out) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        files[str(rel)] = sha256_file(target)
    return files


def jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars turned into Python numbers and tuples into lists (for json.dumps)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
