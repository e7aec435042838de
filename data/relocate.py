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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core import atomic
from data.index import PairedIndex, load_index
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


def build_relative_index(roots: Mapping[str, str], base: Path, out: Path, classes: Sequence[str]) -> PairedIndex:
    """Index paired folders (:mod:`data.adapters.folder` layout) with every path relative to ``base``.

    Args:
        roots: dataset version -> its root folder, relative to ``base`` (a link there is kept as
            given: the relative path names the link, not its target).
        base: the folder paths are made relative to (the pipeline's workspace).
        out: where the index is written: ``versions/<version>.json`` per version, and
            ``index.json`` merging them when there are several.
        classes: the target class names.

    Returns:
        The index as read back from its relocated file (pair paths relative to ``base``).
    """
    from data.adapters.folder import build_index
    from data.merge import merge_indexes

    built = [build_index(base / rel, version, out / "versions", classes=classes, progress=False)
             for version, rel in roots.items()]
    idx = merge_indexes(built, out / "index.json") if len(built) > 1 else built[0]
    prefixes = {k: v for rel in roots.values() for k, v in root_prefixes(base / rel, rel).items()}
    return load_index(relocate_index(Path(str(idx.path)), prefixes))
