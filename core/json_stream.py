"""Reading one large JSON object element by element, in constant memory.

Why: a stage that holds a whole 10k-frame COCO file as Python dicts grows by ~15 KB per frame
(the refine stage went from 85 MB at 1k frames to 224 MB at 10k). Its arrays (``images``,
``annotations``) are what grows; reading them one element at a time keeps memory flat.
The standard library's C scanner (``json.JSONDecoder.raw_decode``) decodes each element from a
buffer of at most a few chunks; the values are the same Python objects ``orjson``/``json`` would
give for the whole file (same float parsing; ``NaN``/``Infinity`` accepted as :func:`core.atomic.read_json`
accepts them, so validators can name them). ``ijson`` is the usual library for this; it is not
a dependency of the project, and the top-level-object case needed here is small.
"""
from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator
from typing import Any, TextIO

_CHUNK = 1 << 16            # characters read per refill (64 Ki: the buffer holds at most ~2 chunks)
_WS = " \t\n\r"

#: The value :func:`iter_object` yields for an array key before its elements (so an empty array is seen).
ARRAY = object()


class NotAnObject(ValueError):
    """The file's top-level value is not a JSON object (e.g. a list)."""


class _Reader:
    """A text buffer over a file, refilled by chunks, with the position of the next token."""

    def __init__(self, fh: TextIO, chunk: int) -> None:
        self.fh, self.chunk = fh, chunk
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _fill(self) -> None:
        data = self.fh.read(self.chunk)
        if not data:
            self.eof = True
        self.buf = self.buf[self.pos:] + data
        self.pos = 0

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos] if self.pos < len(self.buf) else ""
            self._fill()

    def expect(self, ch: str, what: str) -> None:
        got = self.peek()
        if got != ch:
            raise ValueError(f"expected {ch!r} {what}, found {got or 'end of file'!r}")
        self.pos += 1

    def value(self) -> Any:
        """The next JSON value. A value that ends at the end of the buffer may continue in the next
        chunk (a number, or an incomplete object), so the buffer is extended and the value re-read."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.eof:
                    raise
                self._fill()
                continue
            if end >= len(self.buf) and not self.eof:
                self._fill()
                continue
            self.pos = end
            return value


def iter_object(path: str | os.PathLike[str], arrays: Collection[str], *,
                chunk: int = _CHUNK) -> Iterator[tuple[str, int | None, Any]]:
    """The members of the JSON object in file ``path``, in file order, as ``(key, index, value)``.

    For a key in ``arrays`` whose value is an array, first ``(key, None, ARRAY)``, then one triple
    per element (``index`` 0, 1, ...); for every other key one triple with ``index`` None and the
    whole value.

    Raises:
        NotAnObject: the top-level value is not an object.
        ValueError: the file is not valid JSON (``json.JSONDecodeError`` for bad values).
        OSError / UnicodeDecodeError: the file cannot be read as UTF-8 text.
    """
    with open(path, encoding="utf-8") as fh:
        r = _Reader(fh, chunk)
        if (first := r.peek()) != "{":
            raise NotAnObject(f"expected a JSON object, found {first or 'an empty file'!r}")
        r.pos += 1
        if r.peek() == "}":
            r.pos += 1
        else:
            yield from _members(r, arrays)
        if r.peek():
            raise ValueError("extra data after the JSON object")


def _members(r: _Reader, arrays: Collection[str]) -> Iterator[tuple[str, int | None, Any]]:
    """The members of an object whose ``{`` was read, up to and including its ``}``."""
    while True:
        key = r.value()
        if not isinstance(key, str):
            raise ValueError(f"expected an object key (a string), found {key!r}")
        r.expect(":", f"after the key {key!r}")
        if key in arrays and r.peek() == "[":
            r.pos += 1
            yield key, None, ARRAY
            i = 0
            while r.peek() != "]":
                if i:
                    r.expect(",", f"between elements of {key!r}")
                yield key, i, r.value()
                i += 1
            r.pos += 1
        else:
            yield key, None, r.value()
        if r.peek() != ",":
            r.expect("}", "at the end of the object")
            return
        r.pos += 1
