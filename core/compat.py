"""Compatibility shims for this stack (torch 2.14, mmengine 0.10.7, mmdet 3.3, numpy 2).

Each shim says why it exists. Nothing here patches site-packages or rebinds anything
process-wide (no ``torch.load`` swap): the choice of how a file is unpickled is made by the
caller that opens it, so steps running in threads (the Prefect door) cannot see each other's trust.

1. ``load_trusted_checkpoint``: torch >= 2.6 loads with ``weights_only=True`` by default.
   mmengine training checkpoints pickle ``HistoryBuffer``, numpy arrays and optimizer
   state, so they fail with ``UnpicklingError: Weights only load failed``. Allow-listing
   classes (``add_safe_globals``) ends up needing builtins such as ``getattr``, which defeats
   the safety. So the one file a caller names as trusted is opened with an explicit
   ``weights_only=False``; every other ``torch.load`` keeps the strict default. Only name files
   you trust (your own training outputs, a checkpoint you chose): unpickling can run code.
   A training's resume goes through mmengine's checkpoint loader with the same rule, by a
   scheme of its own (``tasks.train_hooks.TRUSTED_SCHEME``), not by a patch.
2. ``slim_checkpoint``: what rgb2thermal writes for inference loads under the strict default.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)


def load_trusted_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Load ``path``, a checkpoint the user (or a training, for its own files) named, fully.

    ``weights_only=False`` is passed explicitly for this one call (see the module docstring for
    why); nothing else in the process changes, so a concurrent strict load elsewhere stays strict.

    Args:
        path: the trusted ``.pth`` file.
        map_location: as ``torch.load``'s (default ``"cpu"``).

    Returns:
        What the file holds (a dict for mmengine/mmdet checkpoints).
    """
    log.debug("loading trusted checkpoint %s with weights_only=False", path)
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
