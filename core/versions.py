"""Dataset version names: the key of a homography registry entry, a merged index and a DVC data folder.

One rule for all of them (a file-name-safe word), checked where a name enters the product.
"""
from __future__ import annotations

import re

from core.errors import InputError

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_version_name(version: str) -> None:
    """Raise :class:`InputError` unless ``version`` is a file-name-safe word (e.g. ``flir_v1``)."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise InputError(f"dataset version {version!r} is not a valid version name", "dataset version",
                         "use letters, digits, '_', '-', '.' (e.g. flir_v1)")
