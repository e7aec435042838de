"""Dataset adapters: each turns one source layout into the paired index (see :mod:`data.index`).

Every adapter module exposes ``build_index(root, version, out_dir, classes=("person", "car"),
class_map=None, pairs_file=None, *, exclusions=None, options=None, progress=True) -> PairedIndex``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from core.errors import InputError

ADAPTERS = ("folder", "flir_v1", "flir_v2")


def get_adapter(name: str) -> ModuleType:
    """The adapter module called ``name`` (one of :data:`ADAPTERS`)."""
    if name not in ADAPTERS:
        raise InputError(f"unknown dataset format {name!r}", "--format", f"use one of {', '.join(ADAPTERS)}")
    return importlib.import_module(f"data.adapters.{name}")
