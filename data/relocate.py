"""Rewrite an index's absolute paths as paths relative to a base folder (the pipeline's workspace).

Why: the pipeline keys every step by the *content* of what it reads, and the index's files (pairs,
COCO ``file_name``s, exclusions, ``meta.root``) are read by every later step. With absolute paths
in them, a dataset folder or a workspace moved with the same content would change every key and
recompute everything. The pipeline reaches each dataset root through a link inside the workspace
(``datasets/<version>``, refreshed at run start) and writes the index with paths relative to the
workspace; its steps resolve them against the workspace (``image_root``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core import atomic
#: The index files that hold paths: the index JSON and its COCO side files.
_SIDE_KEYS = ("rgb_images", "thermal_images", "rgb_labels", "thermal_labels")


def root_prefixes(root: Path, rel: str) -> dict[str, str]:
    """The absolute forms of ``root`` (as given and with links resolved) mapped to ``rel``."""
    return {os.path.normpath(os.path.abspath(root)): rel, os.path.realpath(root): rel}


def _rewrite(value: Any, prefixes: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for old, new in prefixes.items():
            if value == old:
                return new
            if value.startswith(old + os.sep):
                return new + "/" + Path(value[len(old) + 1:]).as_posix()
        return value
    if isinstance(value, list):
        return [_rewrite(v, prefixes) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite(v, prefixes) for k, v in value.items()}
    return value


def relocate_index(index_path: Path, prefixes: Mapping[str, str]) -> Path:
    """Rewrite, in place (atomically), every string of the index at ``index_path`` and of its COCO
    side files that starts with a key of ``prefixes`` (an absolute folder) to start with its value
    (a relative folder). Returns ``index_path``.

    Args:
        index_path: an index JSON (schema ``rgb2thermal.index/1``) written by :mod:`data.index_build`.
        prefixes: absolute folder -> the relative folder that replaces it (see :func:`root_prefixes`);
            longer prefixes are tried first, so nested roots map to the most specific one.
    """
    ordered = dict(sorted(prefixes.items(), key=lambda kv: -len(kv[0])))
    doc = atomic.read_json(index_path)
    atomic.write_json(index_path, _rewrite(doc, ordered), indent=None)
    for key in _SIDE_KEYS:
        if doc.get(key):
            side = Path(index_path).parent / doc[key]
            atomic.write_json(side, _rewrite(atomic.read_json(side), ordered), indent=None)
    return index_path
