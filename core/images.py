"""One decoder for RGB and thermal frames, and the conversions each consumer needs.

Why one: the stages used to decode the same file four ways (``IMREAD_COLOR`` in infer, which
silently shifts 16-bit frames to their high byte; ``IMREAD_UNCHANGED`` in evaluation, which
refused 16-bit; ``ANYDEPTH|ANYCOLOR`` + a percentile stretch in refine and report), so one
16-bit thermal frame meant different pixels to the teacher, the evaluator and the refiner.
Now every stage decodes with :func:`decode_image` / :func:`read_image` and converts with one
of the ``to_*`` functions below.

Conventions:

* A **decoded** image keeps the file's bit depth and colour: ``(H, W)`` for gray, ``(H, W, 3)``
  in OpenCV's **BGR** order for colour; ``uint8`` for 8-bit files, ``uint16`` for 16-bit ones
  (radiometric thermal). An alpha channel is dropped by the decoder (as ``IMREAD_COLOR`` drops
  it, values as stored, not composited), and EXIF orientation is applied (as ``IMREAD_COLOR``
  applies it). The conversions also accept arrays from elsewhere: ``(H, W)``, ``(H, W, 1)``,
  ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA, any integer or float depth.
* **8-bit stretch rule** for any non-``uint8`` depth: linear between the image's 0.5 and 99.5
  percentiles (one pair for all channels), clipped to 0..255; a flat image becomes all 0. A fixed
  ``/256`` would leave most radiometric frames nearly flat (their values span a few hundred
  counts of 65536). ``uint8`` input is never rescaled.
* :func:`to_bgr_u8`: ``(H, W, 3)`` uint8 BGR, what detectors (mmdet, OpenCV) take;
  :func:`to_rgb_u8`: the same pixels in RGB order, what SAM2 takes;
  :func:`to_gray_u8`: ``(H, W)`` uint8, what the classical refiner and overlays use.

For 8-bit gray, BGR and BGRA files ``to_bgr_u8(decode_image(data))`` equals
``cv2.imdecode(data, IMREAD_COLOR)`` bit for bit, so 8-bit results are what they always were.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: The reason recorded for bytes that are not a decodable image.
UNDECODABLE = "corrupt or unsupported image (OpenCV could not decode it)"


def read_error(exc: OSError) -> str:
    """The reason recorded for a file that could not be read (missing, permissions, I/O)."""
    return f"cannot read file ({exc.__class__.__name__}: {exc.strerror or exc})"


def decode_image(data: bytes) -> np.ndarray | None:
    """Decode encoded image bytes (PNG, JPEG, TIFF, ...) keeping bit depth and colour.

    Returns ``(H, W)`` gray or ``(H, W, 3)`` BGR, ``uint8`` or ``uint16`` (see the module
    docstring), or ``None`` when the bytes are empty, corrupt, truncated or not an image format
    OpenCV reads.
    """
    import cv2

    if not data:
        return None
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error:
        return None
    if img is None or img.size == 0:
        return None
    return img


def read_image(path: str | os.PathLike[str], data: bytes | None = None) -> tuple[np.ndarray | None, str]:
    """Read and decode one image file (from ``data`` when its bytes were already read).

    Returns ``(image, "")``, or ``(None, reason)`` with the reason a stage records for a skipped
    image (:func:`read_error` or :data:`UNDECODABLE`). Never raises for a bad file.
    """
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return None, read_error(exc)
    img = decode_image(data)
    return (None, UNDECODABLE) if img is None else (img, "")


def size_mismatch(actual: tuple[int, int], expected: tuple[int, int]) -> str:
    """``""`` when an image's ``(width, height)`` is what its COCO entry says, else the skip reason."""
    if tuple(actual) == tuple(expected):
        return ""
    return f"image is {actual[0]}x{actual[1]} but the COCO file says {expected[0]}x{expected[1]}"


def _gray_or_bgr(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` view of an image: a single channel squeezed, alpha dropped."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[..., :3]
    raise ValueError(f"image has shape {image.shape}; expected (H, W), (H, W, 1), (H, W, 3) BGR or (H, W, 4) BGRA")


def _stretch_u8(image: np.ndarray) -> np.ndarray:
    """Non-8-bit -> uint8 by the stretch rule (module docstring); ``uint8`` is returned as it is."""
    if image.dtype == np.uint8:
        return image
    f = image.astype(np.float32)
    lo, hi = np.percentile(f, [0.5, 99.5])
    if hi <= lo:
        return np.zeros(f.shape, dtype=np.uint8)
    return np.clip((f - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """Any image (gray, BGR or BGRA; 8 or 16 bit) -> ``(H, W)`` uint8 gray.

    Colour is converted to gray first (OpenCV's BGR weights, at the image's own depth), then a
    non-8-bit result is stretched between its 0.5 and 99.5 percentiles.
    """
    import cv2

    img = _gray_or_bgr(image)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2GRAY)
    return _stretch_u8(img)


def to_bgr_u8(image: np.ndarray) -> np.ndarray:
    """Any image (gray, BGR or BGRA; 8 or 16 bit) -> ``(H, W, 3)`` uint8 BGR, what detectors take.

    Alpha is dropped; a non-8-bit image is stretched (one percentile pair for all channels, so
    colour balance is kept; for gray this is exactly :func:`to_gray_u8`); gray is replicated to
    three identical channels. 8-bit BGR input is returned as it is (no copy).
    """
    img = _stretch_u8(_gray_or_bgr(image))
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return img if img.flags.c_contiguous else np.ascontiguousarray(img)


def to_rgb_u8(image: np.ndarray) -> np.ndarray:
    """Any image -> ``(H, W, 3)`` uint8 in **RGB** order (SAM2's input): :func:`to_bgr_u8`, channels reversed."""
    return np.ascontiguousarray(to_bgr_u8(image)[:, :, ::-1])
