"""core.images (one decoder, the conversions) and core.image_cache (the per-image result cache)."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from core.hashing import bytes_sha256
from core.image_cache import ImageCache
from core.images import (UNDECODABLE, decode_image, read_image, size_mismatch, to_bgr_u8, to_gray_u8,
                         to_rgb_u8)

RNG = np.random.default_rng(0)


def _encode(img: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _imread_color(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def _smooth_u8(shape: tuple[int, ...]) -> np.ndarray:
    """A JPEG-friendly 8-bit picture (gradient + noise)."""
    h, w = shape[:2]
    base = np.add.outer(np.arange(h) * 3, np.arange(w) * 2) % 256
    img = base if len(shape) == 2 else np.stack([base, 255 - base, (base * 2) % 256], axis=2)
    return np.clip(img + RNG.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name, img, ext", [
    ("gray png", RNG.integers(0, 256, (17, 23), dtype=np.uint8), ".png"),
    ("bgr png", RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8), ".png"),
    ("bgra png", RNG.integers(0, 256, (17, 23, 4), dtype=np.uint8), ".png"),
    ("gray jpeg", _smooth_u8((32, 40)), ".jpg"),
    ("bgr jpeg", _smooth_u8((32, 40, 3)), ".jpg"),
])
def test_8bit_files_decode_exactly_like_imread_color(name, img, ext):
    """What infer fed the detector before (``IMREAD_COLOR``) is what it is fed now, bit for bit."""
    data = _encode(img, ext)
    ours = to_bgr_u8(decode_image(data))
    ref = _imread_color(data)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape == (*img.shape[:2], 3)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(to_rgb_u8(decode_image(data)), cv2.cvtColor(ref, cv2.COLOR_BGR2RGB))


def test_16bit_gray_keeps_depth_and_is_stretched_not_shifted():
    raw = np.full((20, 30), 30_000, np.uint16)
    raw[5:15, 10:20] = 30_400                      # a warm object, 400 counts above the background
    raw[0, 0], raw[-1, -1] = 0, 65_535             # two outliers: cut by the percentiles
    img = decode_image(_encode(raw))
    assert img.dtype == np.uint16 and img.shape == (20, 30)
    np.testing.assert_array_equal(img, raw)
    gray = to_gray_u8(img)
    lo, hi = np.percentile(raw.astype(np.float32), [0.5, 99.5])
    expect = np.clip((raw.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(gray, expect)
    assert gray[10, 15] > 200 and gray[2, 2] < 50  # contrast survives (a >>8 shift gives 117 vs 118)
    bgr = to_bgr_u8(img)
    assert bgr.shape == (20, 30, 3) and bgr.dtype == np.uint8
    np.testing.assert_array_equal(bgr, np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(to_rgb_u8(img), bgr)
    assert not to_gray_u8(np.full((4, 4), 1234, np.uint16)).any()        # flat frame: all 0, no division by 0


def test_3channel_8bit_thermal_and_bgra_arrays():
    t = RNG.integers(0, 256, (12, 14), dtype=np.uint8)
    three = np.repeat(t[:, :, None], 3, axis=2)     # thermal saved as 3 identical channels
    img = decode_image(_encode(three))
    assert img.shape == (12, 14, 3)
    np.testing.assert_array_equal(to_gray_u8(img), t)
    np.testing.assert_array_equal(to_bgr_u8(img), three)
    bgra = RNG.integers(0, 256, (12, 14, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(_encode(bgra)), bgra[..., :3])       # alpha dropped on decode
    np.testing.assert_array_equal(to_bgr_u8(bgra), bgra[..., :3])                   # ... and by the conversion
    assert to_bgr_u8(bgra).flags.c_contiguous
    np.testing.assert_array_equal(to_gray_u8(bgra), cv2.cvtColor(bgra[..., :3].copy(), cv2.COLOR_BGR2GRAY))
    np.testing.assert_array_equal(to_bgr_u8(t[:, :, None]), three)
    c16 = RNG.integers(1000, 2000, (12, 14, 3), dtype=np.uint16)
    assert to_bgr_u8(c16).dtype == np.uint8 and to_bgr_u8(c16).shape == (12, 14, 3)
    with pytest.raises(ValueError, match="shape"):
        to_bgr_u8(np.zeros((4, 4, 2), np.uint8))


def test_corrupt_truncated_empty_and_missing_files(tmp_path):
    good = _encode(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    for data in (b"", b"\x89PNG\r\n\x1a\n this is not an image", good[: len(good) // 2]):
        assert decode_image(data) is None
        f = tmp_path / "x.png"
        f.write_bytes(data)
        assert read_image(f) == (None, UNDECODABLE)
    img, err = read_image(tmp_path / "missing.png")
    assert img is None and err.startswith("cannot read file (FileNotFoundError")
    f.write_bytes(good)
    img, err = read_image(f)
    assert err == "" and img.shape == (16, 16, 3)
    assert read_image(tmp_path / "not-read.png", data=good)[0].shape == (16, 16, 3)   # bytes already read
    assert size_mismatch((16, 16), (16, 16)) == ""
    assert size_mismatch((16, 12), (16, 16)) == "image is 16x12 but the COCO file says 16x16"


# --- the per-image cache ------------------------------------------------------------------------------

SCHEMA = "rgb2thermal.test-cache/1"


def _entry_ok(e: dict) -> bool:
    return len(e["boxes"]) == len(e["scores"])


def test_cache_miss_put_hit_and_layout(tmp_path):
    cache = ImageCache(tmp_path / "c", SCHEMA)
    key = cache.key(image="ab" * 32, model="m1", params={"min_score": 0.05})
    assert cache.get(key) is None
    cache.put(key, {"boxes": [[1, 2, 3, 4]], "scores": [0.5]})
    assert cache.path(key) == tmp_path / "c" / key[:2] / f"{key}.json" and cache.path(key).is_file()
    assert cache.get(key, _entry_ok) == {"schema": SCHEMA, "boxes": [[1, 2, 3, 4]], "scores": [0.5]}
    assert not list(cache.path(key).parent.glob(".*"))         # no temporary left behind
    # parts and schema are in the key, dict order is not
    assert cache.key(params={"min_score": 0.05}, model="m1", image="ab" * 32) == key
    assert cache.key(image="ab" * 32, model="m2", params={"min_score": 0.05}) != key
    assert ImageCache(tmp_path / "c", "rgb2thermal.test-cache/2").key(image="ab" * 32, model="m1",
                                                                    params={"min_score": 0.05}) != key
    with pytest.raises(ValueError, match="reserved"):
        cache.key(schema="x")


def test_cache_key_depends_on_content_not_path(tmp_path):
    data = _encode(RNG.integers(0, 256, (8, 8), dtype=np.uint8))
    a, b = tmp_path / "one" / "a.png", tmp_path / "two" / "b.png"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(data)
    keys = {ImageCache(root, SCHEMA).key(image=bytes_sha256(p.read_bytes()), model="m")
            for root, p in ((tmp_path / "c1", a), (tmp_path / "c2", b))}
    assert len(keys) == 1                          # other file name, other folder, other cache root: same key
    b.write_bytes(_encode(np.zeros((8, 8), np.uint8)))
    assert ImageCache(tmp_path, SCHEMA).key(image=bytes_sha256(b.read_bytes()), model="m") not in keys


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not an object", "other schema", "rejected", "raises"])
def test_bad_entries_warn_and_count_as_absent(tmp_path, caplog, damage):
    cache = ImageCache(tmp_path, SCHEMA)
    key = cache.key(image="cd" * 32)
    cache.put(key, {"boxes": [[1, 2, 3, 4]], "scores": [0.5]})
    f = cache.path(key)
    text = f.read_text()
    f.write_bytes({"garbage": b"\xff\xfe\x00 not json", "truncated": text[: len(text) // 2].encode(),
                   "not an object": b"[1, 2]",
                   "other schema": text.replace(SCHEMA, "rgb2thermal.test-cache/0").encode(),
                   "rejected": text.replace("[0.5]", "[0.5,0.7]").encode(),
                   "raises": text.replace('"boxes"', '"bxoes"').encode()}[damage])
    with caplog.at_level(logging.WARNING, logger="core.image_cache"):
        assert cache.get(key, _entry_ok) is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and str(f) in caplog.records[0].getMessage()
    # recomputed and rewritten: the next read is a hit again, without a warning
    caplog.clear()
    cache.put(key, {"boxes": [[1, 2, 3, 4]], "scores": [0.5]})
    assert cache.get(key, _entry_ok) is not None and not caplog.records
