"""Content hashes for content-addressed caches and run records.

Caches are keyed by *content*, never by path or mtime: renaming a dataset folder must not
invalidate inference, and editing an image in place must.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (streamed, constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_sha256(obj: Any) -> str:
    """Hash of a JSON-able object, independent of dict key order."""
    canon = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def short(digest: str, n: int = 16) -> str:
    return digest[:n]


def tree_sha256(paths: list[Path]) -> str:
    """Hash of several files' contents, order-independent (sorted by content hash)."""
    return json_sha256(sorted(file_sha256(p) for p in paths))
