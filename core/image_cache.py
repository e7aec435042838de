"""The per-image result cache of the expensive stages (``infer``, ``refine``): one entry per image.

Why per image and content-addressed: users re-run a stage after adding images or changing a
cheap downstream parameter; only images whose *content* or whose result-changing *parameters*
are new should be recomputed. So a key is the sha256 of the stage's schema plus what the caller
passes, which must be content and parameters only (the image bytes' sha256, the model's
fingerprint, the parameters that change the result), never a path or an mtime: renaming a
dataset folder keeps the cache, editing an image in place invalidates its entry.

Layout: ``root/<key[:2]>/<key>.json`` (256 shards, so no folder holds 10k+ files), one compact
JSON object per entry that carries its ``schema``. Writes are atomic (:mod:`core.atomic`) but not
fsync'ed: a reader never sees a half-written entry, and an entry torn by a crash, unreadable or
of another schema is logged at WARNING and treated as absent, so it is recomputed and rewritten.
Nothing is ever deleted here (a cache folder can be removed at any time).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import atomic
from core.hashing import json_sha256

log = logging.getLogger(__name__)


class ImageCache:
    """Entries of one stage under ``root``; ``schema`` names the entry format and meaning.

    Bump the stage's ``schema`` string whenever what an entry holds, or how it was computed
    (e.g. how images are decoded), changes: it is part of every key and stored in every entry.
    """

    def __init__(self, root: str | Path, schema: str) -> None:
        self.root = Path(root)
        self._root = os.fspath(self.root)
        self.schema = schema

    def key(self, **parts: Any) -> str:
        """Hex sha256 of the schema and ``parts`` (JSON-able; dict key order does not matter).

        ``parts`` are content and parameters only, e.g. ``image=<sha256 of the file>,
        model=<fingerprint>, params={...}``; never file paths or mtimes.
        """
        if "schema" in parts:
            raise ValueError("'schema' is reserved in cache keys")
        return json_sha256({"schema": self.schema, **parts})

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` lives: ``root/<key[:2]>/<key>.json``."""
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, validate: Callable[[dict], bool] | None = None) -> dict | None:
        """The entry stored under ``key`` (with its ``schema`` field), or None when absent.

        An entry that cannot be read or parsed, is not a JSON object, has another schema, or that
        ``validate`` rejects (returns False or raises ``KeyError``/``TypeError``/``ValueError``/
        ``IndexError`` on it) is logged at WARNING and treated as absent.
        """
        path = os.path.join(self._root, key[:2], key + ".json")     # str: Path objects per image cost more
        try:
            entry = atomic.read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cache entry %s is unreadable (%s); recomputing it", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("schema") != self.schema:
            found = entry.get("schema") if isinstance(entry, dict) else type(entry).__name__
            log.warning("cache entry %s is not a %s entry (found %r); recomputing it", path, self.schema, found)
            return None
        if validate is not None:
            try:
                ok = validate(entry)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                ok, why = False, f"{exc.__class__.__name__}: {exc}"
            else:
                why = "rejected by the stage"
            if not ok:
                log.warning("cache entry %s has an unexpected format (%s); recomputing it", path, why)
                return None
        return entry

    def put(self, key: str, entry: dict) -> Path:
        """Store ``entry`` (a JSON-able dict; ``schema`` is added) under ``key`` atomically.

        No fsync: an fsync per image would cost as much as the detector, and a torn entry after a
        crash is detected by :meth:`get` and recomputed.
        """
        doc = {"schema": self.schema, **{k: v for k, v in entry.items() if k != "schema"}}
        return atomic.write_bytes(self.path(key), atomic.dumps_json(doc), fsync=False)
