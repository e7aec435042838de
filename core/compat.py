"""Compatibility shims for this stack (torch 2.14, mmengine 0.10.7, mmdet 3.3, numpy 2).

Each shim says why it exists. Nothing here patches site-packages, and nothing changes
behaviour process-wide beyond the ``with`` block that asks for it.

1. ``trusted_checkpoints``: torch >= 2.6 loads with ``weights_only=True`` by default.
   mmengine training checkpoints pickle ``HistoryBuffer``, numpy arrays and optimizer
   state, so ``mmengine.runner.load_checkpoint``, ``mmdet.apis.init_detector``, Runner
   ``load_from`` and ``resume`` all fail with ``UnpicklingError: Weights only load failed``.
   Allow-listing classes (``add_safe_globals``) ends up needing builtins such as
   ``getattr``, which defeats the safety. So: inside the block, *only the files the user
   named* load with ``weights_only=False``; every other ``torch.load`` keeps the strict
   default. Only name files you trust (your own training outputs, a checkpoint you chose):
   unpickling can run code.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def _resolve(p: Any) -> str | None:
    if isinstance(p, (str, os.PathLike)):
        try:
            return str(Path(p).expanduser().resolve())
        except OSError:
            return None
    return None


@contextlib.contextmanager
def trusted_checkpoints(*paths: str | os.PathLike[str]) -> Iterator[None]:
    """Let ``torch.load`` unpickle exactly ``paths`` (and files in a trusted directory) fully.

    A path that is a directory trusts the checkpoints inside it (a training run's work
    directory, where mmengine writes ``epoch_*.pth``/``best_*.pth`` that resume reads back).
    """
    trusted_files = {r for p in paths if (r := _resolve(p)) and not Path(r).is_dir()}
    trusted_dirs = {r for p in paths if (r := _resolve(p)) and Path(r).is_dir()}
    original = torch.load

    def is_trusted(f: Any) -> bool:
        r = _resolve(f)
        if r is None:
            return False
        return r in trusted_files or any(r.startswith(d + os.sep) for d in trusted_dirs)

    @functools.wraps(original)
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if "weights_only" not in kwargs and is_trusted(f):
            log.debug("loading trusted checkpoint %s with weights_only=False", f)
            kwargs["weights_only"] = False
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def load_trusted_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> dict:
    """Load one checkpoint the user named, fully (see module docstring for why)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def slim_checkpoint(checkpoint: dict) -> dict:
    """Keep only what inference needs: loads under torch's strict ``weights_only=True``.

    ``meta.dataset_meta`` (class names) is kept so the detector knows its classes.
    """
    meta = checkpoint.get("meta", {}) or {}
    slim_meta = {"dataset_meta": dict(meta.get("dataset_meta", {}) or {})}
    for key in ("epoch", "iter", "rgb2thermal"):
        if key in meta:
            slim_meta[key] = meta[key]
    return {"state_dict": checkpoint["state_dict"], "meta": _plain(slim_meta)}


def _plain(obj: Any) -> Any:
    """Convert numpy scalars/tuples to plain Python so ``weights_only=True`` accepts them."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj
