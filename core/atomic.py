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

import orjson

from core.errors import InputError


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

    An ``OSError`` that names no file gets ``path`` as its ``filename``: the kernel reports a full disk
    (``ENOSPC``), a quota or a file size limit (``EFBIG``) on ``write``/``fsync``, which name no file,
    and the user must learn which output failed. The temporary is removed in every case.

    Args:
        path: the final file; its folder is created when missing.
        fsync: flush the temporary to disk before the rename.

    Yields:
        The temporary path to write (it does not exist yet).
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
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(final)
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the previous file or the whole new one.

    Args:
        path: the file to write.
        data: its new content.
        fsync: flush to disk before the rename (see :func:`atomic_path`).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``); ``filename`` names ``path``, the previous file
            is untouched and no temporary is left.
    """
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any, *, indent: int | None = None) -> bytes:
    """UTF-8 JSON bytes of ``obj``: compact, or indented by 2 with ``indent=2``; keys keep
    insertion order so outputs are byte-stable; numpy scalars and arrays are written as numbers.

    orjson rather than the standard library: a 10k-image COCO file encodes ~10x faster and
    parses ~2-3x faster, and the JSON a +1 % re-run reads and writes was a third of its time
    (benchmarks/RESULTS.md, pipeline incremental). Non-finite floats are written as ``null``
    (the standard library would write ``NaN``, which is not JSON).
    """
    if indent not in (None, 2):
        raise ValueError(f"indent must be None or 2, got {indent!r}")
    opts = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(obj, option=opts)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write JSON atomically (see :func:`dumps_json`), with a final newline."""
    return write_bytes(path, dumps_json(obj, indent=indent) + b"\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; malformed JSON or UTF-8 raises ``ValueError`` (``json.JSONDecodeError``).

    ``NaN``/``Infinity`` tokens (not JSON, but Python and numpy tools write them) are accepted as
    the standard library accepts them, so the validators downstream can name the non-finite value
    instead of failing on a parse error: orjson refuses them, and only then is the standard
    library's (slower) parser run on the same bytes.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def read_json_input(path: str | os.PathLike[str], *, missing: str = "file not found", missing_fix: str = "check the path",
                    invalid: str = "not valid JSON", invalid_fix: str = "re-export the file",
                    error: type[InputError] = InputError) -> Any:
    """:func:`read_json` of a file the user named: its two usual failures (absent, not JSON) are
    raised as ``error`` saying what (``missing``, ``invalid (parser message)``) and how to fix."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise error(missing, str(path), missing_fix) from None
    except ValueError as exc:
        raise error(f"{invalid} ({exc})", str(path), invalid_fix) from None
