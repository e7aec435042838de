"""``--set a.b.c=value`` overrides of a nested parameter mapping (the CLI's, the sweeps' and the demo's).

Why a module of its own: the same dotted-key rule is used before validation (on the raw YAML
mapping) by the pipeline, the Optuna search space and the benchmarks, so it lives in the utility
layer; values are parsed as YAML (``a=0.5`` is a float, ``a=[flip]`` a list, ``a='x y'`` a string).
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

from core.errors import InputError


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (``['a', 'b', 'c']``, YAML-parsed value)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
        raise InputError(f"bad override {item!r}", "--set", "write KEY=VALUE with a dotted key, e.g. pseudo.score_threshold=0.6")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise InputError(f"override {item!r}: value is not valid YAML ({exc})", "--set",
                         "quote strings, e.g. a.b='x y'") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b=value`` override applied (intermediate mappings created)."""
    out = copy.deepcopy(data)
    for item in overrides:
        keys, value = parse_override(item)
        set_dotted(out, keys, value, item)
    return out


def set_dotted(data: dict[str, Any], keys: list[str], value: Any, item: str = "") -> None:
    """``data[k0][k1]...[kn] = value`` in place, creating intermediate mappings (``item``: how the
    user wrote it, for the error)."""
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise InputError(f"override {item or '.'.join(keys)!r}: '{k}' is a value, not a section", "--set",
                             "override a leaf key of a section")
        node = nxt
    node[keys[-1]] = value
