"""Fingerprints of dataset roots: what the pipeline's ``data`` step keys every later step by, and
what a run record names each dataset version by.

Two fingerprints, for two jobs: :func:`content_fingerprint` hashes the files themselves (sorted
relative paths + content hashes, dot-files skipped), so it decides whether work is re-run and
does not depend on where the folder lies; :func:`dataset_fingerprint` is the name users know,
the DVC md5 of the last ``dvc add`` when DVC tracks the folder (only as fresh as that), else the
content fingerprint. Paths never enter either.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from core.errors import InputError
from core.hashing import HashMemo, file_sha256, json_sha256


def fingerprint_roots(roots: Mapping[str, Path], memo: HashMemo | None = None) -> dict[str, dict[str, str]]:
    """Both fingerprints of each dataset root, by version.

    Args:
        roots: dataset version -> the root folder (or file) itself, not a link's name: its content
            and the ``.dvc`` pointer beside it are read.
        memo: file hashes remembered by stat (:class:`core.hashing.HashMemo`), so an unchanged file
            is not read again.

    Returns:
        version -> ``{"fingerprint": dataset_fingerprint, "content": content_fingerprint}``
        (``sha256:<hex>`` or ``dvc:<md5>`` strings).
    """
    out = {}
    for version, root in roots.items():
        content = content_fingerprint(root, memo)
        out[version] = {"fingerprint": dataset_fingerprint(root, content=content), "content": content}
    return out


def dataset_fingerprint(path: str | os.PathLike[str], memo: HashMemo | None = None, *,
                        content: str | None = None) -> str:
    """Fingerprint of a dataset version for records: ``dvc:<md5>`` from its ``.dvc`` file when DVC
    tracks it, else :func:`content_fingerprint` (``content``, when the caller has it already).

    The DVC md5 names the version users know (``dvc add``/``dvc push``), but it is only as fresh
    as the last ``dvc add``: decisions about re-running work use :func:`content_fingerprint`.
    """
    p = Path(path)
    dvc_file = p.with_name(p.name + ".dvc")
    if dvc_file.is_file():
        meta = yaml.safe_load(dvc_file.read_text()) or {}
        outs = meta.get("outs") or [{}]
        if outs[0].get("md5"):
            return f"dvc:{outs[0]['md5']}"
    return content if content is not None else content_fingerprint(p, memo)


def _walk_files(root: str) -> Iterator[tuple[str, str]]:
    """``(relative path, path)`` of every file under ``root``, dot-files and dot-folders skipped,
    symlinked folders not entered (as ``os.walk``). Relative paths are built while walking: with
    ``os.walk`` + ``os.path.relpath`` the path arithmetic cost more than the memo lookups on a
    10k-pair dataset, which every run fingerprints."""
    stack = [("", root)]
    while stack:
        rel_dir, d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                rel = rel_dir + e.name
                if e.is_dir():
                    if not e.is_symlink():
                        stack.append((rel + os.sep, e.path))
                else:
                    yield rel, e.path


def content_fingerprint(path: str | os.PathLike[str], memo: HashMemo | None = None) -> str:
    """``sha256:<hash>`` of a dataset file or folder: sorted relative paths + content hashes
    (dot-files skipped). With ``memo``, files whose stat is unchanged are not read again."""
    p = Path(path)
    sha = memo.sha256 if memo is not None else (lambda f: file_sha256(f))
    if p.is_file():
        return f"sha256:{sha(p)}"
    if not p.is_dir():
        raise InputError("dataset path does not exist", str(p), "check the dataset root in the parameters")
    listing = []
    rel = ""
    try:
        for rel, f in _walk_files(str(p)):
            listing.append([rel, sha(f)])
    except FileNotFoundError as exc:
        gone = os.path.relpath(exc.filename, p) if exc.filename else rel
        raise InputError(f"the dataset changed while being read: {gone} vanished",
                         str(p), "let the copy or sync into the dataset finish, then run again") from None
    return "sha256:" + json_sha256(sorted(listing))
