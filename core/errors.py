"""The error users see for bad input: what is wrong, where, and how to fix it.

The CLI prints these without a traceback (exit code 2); anything else is a bug and keeps
its traceback.

Parameters are validated by pydantic models (stage parameters, ``params.yaml``, the train
spec); :func:`input_error_from_validation` is the ONE place that turns pydantic's
``ValidationError`` into an :class:`InputError`, so every entry point (stage CLIs, the
pipeline, ``rgb2thermal train``) words a bad value the same way: the dotted key, the value
given and what is allowed.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


class InputError(ValueError):
    """Bad user input (file, parameter, dataset). Message: what, where, how to fix."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None) -> None:
        self.what, self.where, self.fix = what, where, fix
        msg = f"{where}: {what}" if where else what
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)


def input_error_from_validation(exc: ValidationError, where: str, *, prefix: str = "",
                                model: type[BaseModel] | None = None, hidden: Iterable[str] = (),
                                fix: str | None = None) -> InputError:
    """All problems of ``exc`` as one :class:`InputError`.

    Each problem reads ``<prefix>.<key>: <pydantic message> (got <value>; allowed: <range>)``;
    the range (``[0, 1]``, ``>= 1``, ``one of [...]``) is read from ``model``'s JSON schema, so
    it always matches the constraint that failed. Unknown keys are listed together and the fix
    names the keys allowed there; ``hidden`` top-level fields (set by the caller, e.g. the
    pipeline's file paths) are left out of that list.
    """
    schema = _schema(model)
    problems: list[str] = []
    unknown: dict[tuple[str, ...], list[str]] = {}
    for e in exc.errors(include_url=False):
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(p for p in (prefix, *loc) if p) or "(parameters)"
        if e["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(key)
            continue
        msg = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        detail = []
        value = e.get("input")
        if loc and not isinstance(value, dict):
            detail.append(f"got {value!r}")
        # custom validators explain themselves, and a Literal's message already lists its choices
        own_words = e["type"] in ("value_error", "assertion_error", "literal_error")
        allowed = _allowed(_node(schema, loc)) if loc and not own_words else None
        if allowed:
            detail.append(f"allowed: {allowed}")
        problems.append(f"{key}: {msg}" + (f" ({'; '.join(detail)})" if detail else ""))
    fixes = []
    for parent, keys in unknown.items():
        problems.insert(0, f"unknown key(s) {keys}")
        node = _node(schema, parent)
        names = [k for k in (node or {}).get("properties", {}) if parent or k not in set(hidden)]
        section = ".".join(p for p in (prefix, *parent) if p)
        if names:
            fixes.append(f"allowed keys in '{section}': {names}" if section else f"allowed keys: {names}")
    fixes.append(fix or "fix the listed keys")
    return InputError("; ".join(problems), where, "; ".join(fixes))


# ---- reading the allowed values off a model's JSON schema ----------------------------------
def _schema(model: type[BaseModel] | None) -> dict[str, Any]:
    if model is None:
        return {}
    from pydantic.errors import PydanticUserError

    try:
        with warnings.catch_warnings():       # defaults that are not JSON (a Path, ...) only warn
            warnings.simplefilter("ignore")
            return model.model_json_schema()
    except PydanticUserError:                 # a type without a JSON schema: no hints, same error
        return {}


def _deref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root.get("$defs", {}).get(node["$ref"].rsplit("/", 1)[-1], {})
    return node


def _branches(root: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    """``X | None`` is ``anyOf: [X, null]``: the non-null branches."""
    node = _deref(root, node)
    if "anyOf" not in node:
        return [node]
    return [b for b in (_deref(root, x) for x in node["anyOf"]) if b.get("type") != "null"]


def _child(node: dict[str, Any], part: str) -> dict[str, Any] | None:
    if part in node.get("properties", {}):
        return node["properties"][part]
    if isinstance(node.get("additionalProperties"), dict):
        return node["additionalProperties"]
    if part.isdigit() and int(part) < len(node.get("prefixItems", [])):
        return node["prefixItems"][int(part)]
    if isinstance(node.get("items"), dict):
        return node["items"]
    return None


def _node(root: dict[str, Any], loc: tuple[str, ...]) -> dict[str, Any] | None:
    """The (dereferenced) schema of the value at ``loc``; None where the path leaves the schema."""
    nodes = _branches(root, root) if root else []
    for part in loc:
        nodes = [b for n in nodes if (c := _child(n, part)) is not None for b in _branches(root, c)]
    return nodes[0] if len(nodes) == 1 else None


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _allowed(node: dict[str, Any] | None) -> str | None:
    """``[0, 1]``, ``(0, 1]``, ``>= 1``, ``one of [...]``, ``at least 1 item(s)``, or None."""
    if not node:
        return None
    if "enum" in node:
        return f"one of {node['enum']}"
    lo = next(((k, node[k]) for k in ("minimum", "exclusiveMinimum") if k in node), None)
    hi = next(((k, node[k]) for k in ("maximum", "exclusiveMaximum") if k in node), None)
    if lo and hi:
        return (f"{'[' if lo[0] == 'minimum' else '('}{_num(lo[1])}, "
                f"{_num(hi[1])}{']' if hi[0] == 'maximum' else ')'}")
    if lo:
        return f"{'>=' if lo[0] == 'minimum' else '>'} {_num(lo[1])}"
    if hi:
        return f"{'<=' if hi[0] == 'maximum' else '<'} {_num(hi[1])}"
    if "minItems" in node:
        n, m = node["minItems"], node.get("maxItems")
        return f"exactly {n} item(s)" if m == n else f"at least {n} item(s)"
    return None
