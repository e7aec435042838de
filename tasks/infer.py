"""Stage ``infer``: batched detector inference over the images a COCO file lists.

Why a stage of its own: inference is the expensive step of label transfer, and users re-run
the cheap steps after it (thresholds, class maps, warps) many times. So results are cached
per image under a key of

    sha256(image file bytes) + detector fingerprint (config + checkpoint) + inference params

which makes a re-run after *adding* images infer only the new ones, and a later change of a
pseudo-label threshold (stage ``pseudo``) infer nothing. Paths and mtimes are not in the key:
renaming a dataset folder keeps the cache, editing an image in place invalidates it.

Nothing here assumes RGB: the same stage runs a teacher directly on thermal frames, tagged
``source="thermal_teacher"``. Images are decoded by :mod:`core.images` (``to_bgr_u8``: gray is
replicated to 3 identical BGR channels, 16-bit frames are stretched between their 0.5/99.5
percentiles, alpha is dropped); 8-bit files give exactly what ``cv2.IMREAD_COLOR`` gives.
The cache is :class:`core.image_cache.ImageCache` (``<cache_dir>/<key[:2]>/<key>.json``).

Boxes: detections are ``xyxy`` float pixels in the ORIGINAL image (as decoded from the file);
the COCO output is ``xywh`` (via ``core.coco.annotation``).

Streaming: images are read, hashed and decoded one at a time, and only ``batch_size`` decoded
images are held at once; per-image results are kept as small arrays until the COCO file is
written, so memory does not grow with the number of images beyond the annotations themselves.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import Field, field_validator

from core.coco import (annotations, categories_from_names, load_dataset, new_dataset, refuse_escaping_file_names,
                       save_dataset)
from core.errors import InputError
from core.hashing import HashMemo, sha256_read_once
from core.image_cache import ImageCache
from core.images import read_error, read_image, size_mismatch, to_bgr_u8
from core.stage_params import PathStr, StageParams
from core.stage_report import StageReport, report_path
from tasks.tta import View, fuse_views, hflip, unflip_boxes

log = logging.getLogger(__name__)

#: Bumped whenever the cache key material, the entry format or its meaning changes
#: (/2: one ``core.images`` decoder, 16-bit frames stretched instead of shifted to 8 bit).
CACHE_SCHEMA = "rgb2thermal.infer-cache/2"
Source = Literal["rgb_teacher", "thermal_teacher", "thermal_student"]
SOURCES: tuple[str, ...] = get_args(Source)
DEFAULT_CACHE_DIR = Path(".cache/rgb2thermal/infer")


#: A test input side in pixels.
Side = Annotated[int, Field(ge=32, le=4096)]


class InferParams(StageParams):
    """How to run the detector.

    - ``config``: mmdet config file or a config name bundled with mmdet.
    - ``checkpoint``: weights file (trusted: it is unpickled), or None for random weights
      (smoke tests and timing only; the report says so).
    - ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    - ``batch_size``: images per forward pass (not in the cache key). Batched padding changes
      scores in about the 6th decimal (measured: 81 of 324 detections on 5 frames differ between
      batch 1 and 2-5), so an entry recomputed in another batch may differ in its last digit; the
      boxes kept and their order are the same in practice, but the output bytes (and so the
      downstream keys) can change.
    - ``min_score``: detections below it are not stored. Keep it below every pseudo-label
      threshold you may try, so threshold changes never need re-inference.
    - ``max_per_image``: keep at most this many detections per image (highest scores).
    - ``source``: provenance tag on every box (``rgb_teacher`` or ``thermal_teacher``).
    - ``tta``: test-time views fused with the plain one per image (:mod:`tasks.tta`):
      ``[flip]`` also runs the mirrored image (twice the inference time).
    - ``input_size``: the detector's test input ``[w, h]`` in pixels instead of its config's
      (e.g. ``[640, 640]`` for a model whose config says 416: small objects are found more often
      at a larger input); None keeps the config's.
    - ``tta_sizes``: further test sizes ``[[w, h], ...]`` whose detections are fused with the
      other views (a second scale; each size costs one more forward pass per image).
    """

    config: PathStr
    checkpoint: PathStr | None = None
    device: str = "auto"
    batch_size: int = Field(default=8, ge=1)
    min_score: float = Field(default=0.05, ge=0, le=1)
    max_per_image: int = Field(default=100, ge=1)
    source: Source = "rgb_teacher"
    tta: list[View] = Field(default_factory=list)
    input_size: tuple[Side, Side] | None = None
    tta_sizes: list[tuple[Side, Side]] = Field(default_factory=list)

    @field_validator("config")
    @classmethod
    def _config_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("no detector config given: pass an mmdet config file or a bundled config name")
        return v

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"checkpoint {v} does not exist (check the path of the .pth file)")
        return v

    def cache_params(self) -> dict[str, Any]:
        """The parameters that change a stored result (batch size and device do not)."""
        out: dict[str, Any] = {"min_score": round(float(self.min_score), 6), "max_per_image": int(self.max_per_image)}
        if self.tta:                      # absent when off: caches made before TTA existed stay valid
            out["tta"] = sorted(set(self.tta))
        if self.input_size is not None:   # absent when unset, as for tta
            out["input_size"] = list(self.input_size)
        if self.tta_sizes:
            out["tta_sizes"] = sorted({tuple(s) for s in self.tta_sizes})
        return out


def _entry_ok(entry: dict) -> bool:
    """A cache entry has what :class:`_Result` and the size check read."""
    return all(k in entry for k in ("size", "boxes", "scores", "labels"))


def _entry(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> dict:
    return {"size": [int(size[0]), int(size[1])],
            "boxes": np.round(boxes.astype(np.float64), 3).tolist(),
            "scores": np.round(scores.astype(np.float64), 6).tolist(),
            "labels": labels.astype(np.int64).tolist()}


@dataclass
class _Result:
    """One image's kept detections, compact arrays: xyxy pixels (rounded to 1e-3), scores (rounded to
    1e-6, as cached, so a cached and a fresh run write identical files), detector label indices."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_entry(cls, e: dict) -> _Result:
        return cls(np.asarray(e["boxes"], np.float64).reshape(-1, 4), np.asarray(e["scores"], np.float64),
                   np.asarray(e["labels"], np.int64))


def _filter(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, params: InferParams) -> tuple[np.ndarray, ...]:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    keep = np.flatnonzero(scores >= params.min_score)
    keep = keep[np.argsort(-scores[keep], kind="stable")][: params.max_per_image]
    return boxes[keep], scores[keep], labels[keep]


def resolve_image_path(file_name: str, root: Path) -> Path:
    """Absolute ``file_name``s are used as they are; relative ones are taken under ``root``."""
    p = Path(file_name).expanduser()
    return p if p.is_absolute() else root / p


def run_infer(inp: Path, out: Path, params: InferParams, *, index: Path | None = None,
              cache_dir: Path | None = None, image_root: Path | None = None, detector: Any = None,
              hash_memo: HashMemo | None = None) -> StageReport:
    """Run the detector over the images of COCO file ``inp``; write COCO detections to ``out``.

    Output: the same images (minus skipped ones), ``categories`` = the detector's classes with
    1-based ids in detector class order, one annotation per stored detection with ``score``,
    ``source`` and ``detector_label`` (0-based class index). Returns the stage report, which is
    also written to ``<out>.report.json``. ``index`` is accepted for the common stage signature
    and unused: the COCO file already names the images.

    ``detector`` (optional): an already loaded ``detection.detector.Detector`` to use instead of
    loading ``params.config``/``params.checkpoint``, so a flow or benchmark that infers several
    files loads the model once (loading costs seconds). Its fingerprint keys the cache, so
    results are shared with runs that load the same config + checkpoint.

    ``hash_memo`` (optional, :class:`core.hashing.HashMemo`): image hashes remembered by stat,
    so a cached image whose file is unchanged is not even read (the pipeline passes its
    workspace memo; 10k cached images then cost a stat and a cache read each).
    """
    from tqdm import tqdm

    from detection.detector import RANDOM_INIT, load_detector, predict_batch

    t0 = time.perf_counter()
    inp, out = Path(inp), Path(out)
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    cache = ImageCache(cache_dir, CACHE_SCHEMA)
    root = Path(image_root) if image_root is not None else inp.parent
    ds = load_dataset(inp)
    refuse_escaping_file_names(ds, root, inp)      # before the detector loads: nothing read outside root
    report = StageReport(stage="infer", inputs={"coco": str(inp)}, params=params.to_dict())
    if index is not None:
        report.inputs["index"] = str(index)

    if detector is None:
        detector = load_detector(params.config, params.checkpoint, params.device)
    classes = tuple(detector.classes)
    report.models["detector"] = detector.description
    report.params["model_fingerprint"] = detector.fingerprint
    report.params["cache_dir"] = str(cache_dir)
    if str(detector.fingerprint).startswith(RANDOM_INIT):
        msg = "no checkpoint given: the detector has RANDOM weights (its detections are meaningless)"
        log.warning(msg)
        report.fallbacks.append(msg)

    results: dict[int, _Result] = {}
    pending: list[tuple[int, np.ndarray, str]] = []
    n_missing = 0

    def flush() -> None:
        if not pending:
            return
        imgs = [img for _, img, _ in pending]
        views = [[(d.boxes, d.scores, d.labels)] for d in predict_batch(detector, imgs, params.input_size)]
        if "flip" in params.tta:
            for v, img, f in zip(views, imgs, predict_batch(detector, [hflip(i) for i in imgs], params.input_size)):
                v.append((unflip_boxes(f.boxes, img.shape[1]), f.scores, f.labels))
        for size in sorted({tuple(s) for s in params.tta_sizes}):
            for v, d in zip(views, predict_batch(detector, imgs, size)):
                v.append((d.boxes, d.scores, d.labels))
        for (image_id, img, key), v in zip(pending, views):
            boxes, scores, labels = v[0] if len(v) == 1 else fuse_views(v, img.shape[1], img.shape[0])
            b, s, lab = _filter(boxes, scores, labels, params)
            entry = _entry(b, s, lab, (img.shape[1], img.shape[0]))
            cache.put(key, entry)
            results[image_id] = _Result.from_entry(entry)
        pending.clear()

    for im in tqdm(ds["images"], desc="infer", unit="img", disable=None):
        path = resolve_image_path(im["file_name"], root)
        try:
            sha, data = sha256_read_once(path, hash_memo)
        except OSError as exc:
            n_missing += isinstance(exc, FileNotFoundError)
            report.skip_image(path, read_error(exc))
            continue
        expected = (im["width"], im["height"])
        key = cache.key(image=sha, model=detector.fingerprint, params=params.cache_params())
        entry = cache.get(key, _entry_ok)
        if entry is not None:
            if wrong := size_mismatch(entry["size"], expected):
                report.skip_image(path, wrong)
                continue
            report.cache_hits += 1
            results[im["id"]] = _Result.from_entry(entry)
            continue
        decoded, err = read_image(path, data)
        del data
        if decoded is None:
            report.skip_image(path, err)
            continue
        if wrong := size_mismatch((decoded.shape[1], decoded.shape[0]), expected):
            report.skip_image(path, wrong)
            continue
        report.cache_misses += 1
        pending.append((im["id"], to_bgr_u8(decoded), key))
        del decoded
        if len(pending) >= params.batch_size:
            flush()
    flush()

    if ds["images"] and n_missing == len(ds["images"]):
        raise InputError(f"none of the {n_missing} images exist (first: {resolve_image_path(ds['images'][0]['file_name'], root)})",
                         str(inp), "relative file_names are resolved against --image-root (default: the COCO file's folder)")
    for s in report.skipped_images:
        log.warning("skipped %s: %s", s["image"], s["reason"])

    images = [im for im in ds["images"] if im["id"] in results]
    done = [results.pop(im["id"]) for im in images]
    # one call for the whole data set: per image, the numpy conversions cost more than a cache read
    labels = np.concatenate([r.labels for r in done]) if done else np.zeros(0, np.int64)
    extras = [{"score": s, "detector_label": lab} for s, lab in
              zip(np.concatenate([r.scores for r in done]).tolist() if done else [], labels.tolist())]
    anns = annotations(1, [im["id"] for im, r in zip(images, done) for _ in range(len(r.labels))],
                       (labels + 1).tolist(), np.concatenate([r.boxes.reshape(-1, 4) for r in done]) if done
                       else np.zeros((0, 4)), extras, source=params.source)
    info = {"stage": "infer", "source": params.source, "detector": detector.description,
            "model_fingerprint": detector.fingerprint}      # no paths: this file's content keys later steps
    save_dataset(out, new_dataset(images, anns, categories_from_names(classes), info), indent=None)

    report.counts = {"images_in": len(ds["images"]), "images_out": len(images), "images_inferred": report.cache_misses,
                     "images_cached": report.cache_hits, "images_skipped": len(report.skipped_images),
                     "detections": len(anns)}
    report.outputs = {"coco": str(out), "report": str(report_path(out))}
    report.seconds = round(time.perf_counter() - t0, 3)
    report.save(report_path(out))
    return report

