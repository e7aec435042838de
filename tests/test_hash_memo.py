"""core.hashing.HashMemo: content hashes remembered by (size, mtime_ns, inode), never stale for
a file whose stat changed, never kept for a file modified within the racy window; and the
dataset fingerprint computed through it equals the one computed by reading every file."""
from __future__ import annotations

import os
import time
from pathlib import Path

from core.hashing import HashMemo, file_sha256
from data.fingerprint import content_fingerprint, dataset_fingerprint

OLD = time.time() - 3600


def _write(path: Path, data: bytes, mtime: float | None = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_memo_hits_for_unchanged_files_and_rehashes_changed_ones(tmp_path: Path) -> None:
    f = _write(tmp_path / "a.bin", b"first")
    memo = HashMemo()
    assert memo.sha256(f) == file_sha256(f) and (memo.hits, memo.misses) == (0, 1)
    assert memo.sha256(f) == file_sha256(f) and memo.hits == 1

    _write(f, b"other", mtime=OLD + 10)            # same size, new content, new mtime
    assert memo.sha256(f) == file_sha256(f) != HashMemo().sha256(_write(tmp_path / "b.bin", b"first"))
    _write(f, b"longer content", mtime=OLD + 10)   # same mtime, new size
    assert memo.sha256(f) == file_sha256(f)


def test_memo_persists_atomically_and_skips_racy_files(tmp_path: Path) -> None:
    old = _write(tmp_path / "old.bin", b"settled")
    new = _write(tmp_path / "new.bin", b"just written", mtime=None)     # mtime = now: racy
    store = tmp_path / "memo" / "file_hashes.json"
    memo = HashMemo(store)
    memo.sha256(old)
    memo.sha256(new)
    memo.save()
    again = HashMemo(store)
    assert again.lookup(old, old.stat()) == file_sha256(old)
    assert again.lookup(new, new.stat()) is None        # re-read next time, never trusted by stat
    assert again.sha256(new) == file_sha256(new)


def test_unreadable_memo_means_rehashing_not_failing(tmp_path: Path, caplog) -> None:
    f = _write(tmp_path / "x.bin", b"data")
    store = _write(tmp_path / "file_hashes.json", b"{not json")
    memo = HashMemo(store)
    assert "unreadable" in caplog.text
    assert memo.sha256(f) == file_sha256(f)
    memo.save()
    assert HashMemo(store).lookup(f, f.stat()) == file_sha256(f)


def test_dataset_fingerprint_with_memo_equals_reading_everything(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i in range(5):
        _write(root / "rgb" / f"{i}.png", bytes([i]) * 10)
    _write(root / ".hidden" / "ignored.bin", b"x")
    memo = HashMemo()
    plain = content_fingerprint(root)
    assert content_fingerprint(root, memo) == plain == content_fingerprint(root, memo)
    assert memo.hits == 5
    _write(root / "rgb" / "2.png", b"\x09" * 10, mtime=OLD + 5)            # edited in place
    assert content_fingerprint(root, memo) == content_fingerprint(root) != plain
    # a DVC-tracked folder is recorded by its .dvc md5; its content fingerprint stays our own hash
    (tmp_path / "ds.dvc").write_text("outs:\n- md5: abc.dir\n  path: ds\n")
    assert dataset_fingerprint(root, memo) == "dvc:abc.dir"
    assert content_fingerprint(root, memo).startswith("sha256:")
