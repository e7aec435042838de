"""Atomic file writes: a reader never sees a half-written output.

Every output of every stage goes through here (write to a temporary file in the same
directory, fsync, then ``os.replace``), so a run killed mid-stage leaves the previous
complete file or nothing, never a truncated JSON that a later stage would trust.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Use it for writers that want a filename (``cv2.imwrite``, ``torch.save``, matplotlib).
    The temporary has the final *name*, inside a fresh hidden folder next to ``path`` (same
    file system, so the rename stays atomic): writers pick the format from the suffix, and
    writers that embed the file name in the bytes stay reproducible (``torch.save`` names its zip
    archive's top folder after the file's stem, so a random temporary name made every checkpoint,
    its fingerprint and every stage key after training differ from run to run).
    ``fsync=False`` keeps the rename atomicity (readers never see a partial file) but skips the
    flush to disk: for bulk regenerable outputs (e.g. 10k synthetic images) where a per-file
    fsync would dominate the run time.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp_path = tmp_dir / final.name
    try:
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write JSON atomically; keys keep insertion order so outputs are byte-stable."""
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
