"""Content hashes for content-addressed caches and run records.

Caches are keyed by *content*, never by path or mtime: renaming a dataset folder must not
invalidate inference, and editing an image in place must.

:class:`HashMemo` only avoids *re-reading* files: it remembers each file's sha256 together with
its ``(size, mtime_ns, inode)`` and returns the remembered hash while those are unchanged
(the rule git's index and DVC's state database use). The key is still the content hash; a
no-change re-run over 10k images then costs a ``stat`` per file instead of reading them all.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (streamed, constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_read_once(path: str | os.PathLike[str], memo: HashMemo | None) -> tuple[str, bytes | None]:
    """``(sha256, bytes)`` of a file that may be decoded next: the bytes are returned when they had
    to be read (so the caller decodes them without a second read), ``None`` when ``memo`` knew the
    hash from the file's unchanged stat (a cached result then needs no read at all).
    Raises ``OSError`` like ``open``."""
    st = os.stat(path)
    sha = memo.lookup(path, st) if memo is not None else None
    if sha is not None:
        return sha, None
    data = Path(path).read_bytes()
    sha = bytes_sha256(data)
    if memo is not None:
        memo.remember(path, st, sha)
    return sha, data


def json_sha256(obj: Any) -> str:
    """Hash of a JSON-able object, independent of dict key order."""
    canon = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def short(digest: str, n: int = 16) -> str:
    return digest[:n]


#: A file modified this close (seconds) to the moment it was hashed may change again within the
#: file system's mtime granularity without its stat changing: such hashes are used once, not kept.
RACY_SECONDS = 2.0
MEMO_SCHEMA = "rgb2thermal.hash-memo/1"


class HashMemo:
    """sha256 of files, remembered by ``(size, mtime_ns, inode)``; optionally persisted as JSON.

    State is the reason this is a class: one memo per workspace, passed explicitly to whatever
    hashes files during a run (no module-level cache). ``path=None`` keeps it in memory only.
    Entries are keyed by absolute path. :meth:`save` writes atomically and only when something
    changed; a missing or unreadable memo file just means every file is read once more.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, list] = {}
        self._dirty = False
        self._lock = threading.Lock()      # steps of a Prefect flow may hash concurrently (threads)
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.is_file():
            try:
                from core import atomic

                doc = atomic.read_json(self.path)
                if doc.get("schema") == MEMO_SCHEMA and isinstance(doc.get("files"), dict):
                    self._entries = doc["files"]
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("hash memo %s unreadable (%s): files will be re-hashed", self.path, exc)

    @staticmethod
    def _stamp(st: os.stat_result) -> list:
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def lookup(self, path: str | os.PathLike[str], st: os.stat_result) -> str | None:
        """The remembered hash of ``path`` if its stat is still ``st``'s, else None."""
        entry = self._entries.get(os.path.abspath(path))
        if entry is not None and entry[:3] == self._stamp(st):
            self.hits += 1
            return entry[3]
        self.misses += 1
        return None

    def sha256(self, path: str | os.PathLike[str], st: os.stat_result | None = None) -> str:
        """The hex sha256 of ``path``'s bytes (from the memo when its stat is unchanged)."""
        st = st or os.stat(path)
        digest = self.lookup(path, st)
        if digest is None:
            digest = file_sha256(path)
            self.remember(path, st, digest)
        return digest

    def remember(self, path: str | os.PathLike[str], st: os.stat_result, digest: str) -> None:
        """Record a hash computed elsewhere (e.g. from bytes already read) for ``path`` at stat ``st``."""
        key = os.path.abspath(path)
        with self._lock:
            if time.time() - st.st_mtime_ns / 1e9 < RACY_SECONDS:
                self._entries.pop(key, None)
                return
            self._entries[key] = [*self._stamp(st), digest]
            self._dirty = True

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        from core import atomic

        with self._lock:
            atomic.write_json(self.path, {"schema": MEMO_SCHEMA, "files": dict(self._entries)}, indent=None)
            self._dirty = False
