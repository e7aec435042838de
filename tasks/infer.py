"""Stage ``infer``: batched detector inference over the images a COCO file lists.

Why a stage of its own: inference is the expensive step of label transfer, and users re-run
the cheap steps after it (thresholds, class maps, warps) many times. So results are cached
per image under a key of

    sha256(image file bytes) + detector fingerprint (config + checkpoint) + inference params

which makes a re-run after *adding* images infer only the new ones, and a later change of a
pseudo-label threshold (stage ``pseudo``) infer nothing. Paths and mtimes are not in the key:
renaming a dataset folder keeps the cache, editing an image in place invalidates it.

The one inference path: this is the only code that runs a detector over a set of frames.
Pseudo-labelling (``infer`` steps), evaluation (the pipeline's ``val``/``eval`` steps through
:func:`infer_results`), the nightly champion's re-scoring, ``rgb2thermal predict`` and a
training's test predictions all call it, so they share the cache, the decoder, TTA and the test
size, and a model is scored with the parameters it is used with. Module layout: :func:`_lookup`
(hash + cache look-up + decode + test pipeline of one frame, in the prefetch thread),
:func:`_flush` (one batch through the detector and its views), :func:`infer_frames` (the loop),
:func:`_infer_coco` (COCO assembly), :func:`run_infer` (the stage), :func:`coco_results` /
:func:`infer_results` (COCO results for a ground truth, what ``COCOeval`` scores).

Nothing here assumes RGB: the same stage runs a teacher directly on thermal frames, tagged
``source="thermal_teacher"``. Images are decoded by :mod:`core.images` (``to_bgr_u8``: gray is
replicated to 3 identical BGR channels, 16-bit frames are stretched between their 0.5/99.5
percentiles, alpha is dropped); 8-bit files give exactly what ``cv2.IMREAD_COLOR`` gives.
The cache is :class:`core.image_cache.ImageCache` (``<cache_dir>/<key[:2]>/<key>.json``).

Boxes: detections are ``xyxy`` float pixels in the ORIGINAL image (as decoded from the file);
the COCO output is ``xywh`` (via ``core.coco.annotation``).

Sharding (``compute``, :mod:`tasks.shard`): over Dask, chunks of frames run :func:`infer_frames` on
the workers (:func:`_infer_chunk`, the detector loaded once per worker) to fill the cache, then the
stage's own pass is all cache hits and writes the same bytes as a one-process run.

Streaming: each file is read once (hashed and decoded from the same bytes), decoded and put
through the test pipeline (built once per run), by one prefetch thread at most two batches ahead
of the forward pass when a core is free for it (a GPU model, or more cores than torch threads;
:func:`prefetch_threads`), so at most ``3 * batch_size`` decoded images are held at once; per-image
results are kept as small arrays until the COCO file is written, so memory does not grow with the
number of images beyond the annotations themselves. Results, cache writes and the report follow
input order, so the output does not depend on the prefetch.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import Field, field_validator

from core.coco import (annotations, categories_from_names, load_dataset, new_dataset, refuse_escaping_file_names,
                       save_dataset, validate_results)
from core.errors import InputError
from core.hashing import HashMemo, sha256_read_once
from core.image_cache import ImageCache
from core.images import read_error, read_image, size_mismatch, to_bgr_u8
from core.stage_params import PathStr, StageParams
from core.stage_report import StageReport, report_path
from core.stage_spec import StageSpec
from tasks.compute import Compute
from tasks.tta import View, fuse_views, hflip, unflip_boxes

log = logging.getLogger(__name__)

#: Bumped whenever the cache key material, the entry format or its meaning changes
#: (/2: one ``core.images`` decoder, 16-bit frames stretched instead of shifted to 8 bit).
CACHE_SCHEMA = "rgb2thermal.infer-cache/2"
Source = Literal["rgb_teacher", "thermal_teacher", "thermal_student"]
SOURCES: tuple[str, ...] = get_args(Source)


#: The highest score floor evaluation uses (see :func:`infer_results`): low-score detections count in COCO AP.
EVAL_MIN_SCORE = 0.01

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


@dataclass
class _Miss:
    """A frame to infer: its BGR uint8 pixels (kept for TTA views), cache key, and the plain view
    already through the detector's test pipeline (``packed``, for ``original`` = ``(width, height)``)."""

    img: np.ndarray
    key: str
    packed: dict
    original: tuple[int, int]


@dataclass(frozen=True)
class _Skip:
    """A frame the run goes on without (missing, unreadable, or not the size its COCO entry says)."""

    path: Path
    reason: str


def _lookup(path: Path, expected: tuple[int, int], cache: ImageCache, key_parts: dict[str, Any],
            hash_memo: HashMemo | None, pipeline: Any) -> _Result | _Miss | _Skip:
    """One frame: its cached result, or (a miss) its decoded pixels, key and pipeline output, or why
    it is skipped. Runs in the prefetch thread, so it records nothing: :func:`infer_frames` updates
    the report in input order. Each file is read once: hashed and decoded from the same bytes."""
    from detection.detector import preprocess

    try:
        sha, data = sha256_read_once(path, hash_memo)
    except OSError as exc:
        return _Skip(path, read_error(exc))
    key = cache.key(image=sha, **key_parts)
    entry = cache.get(key, _entry_ok)
    if entry is not None:
        wrong = size_mismatch(entry["size"], expected)
        return _Skip(path, wrong) if wrong else _Result.from_entry(entry)
    decoded, err = read_image(path, data)
    del data
    if decoded is None:
        return _Skip(path, err)
    if wrong := size_mismatch((decoded.shape[1], decoded.shape[0]), expected):
        return _Skip(path, wrong)
    img = to_bgr_u8(decoded)
    packed, original = preprocess(pipeline, img)
    return _Miss(img, key, packed, original)


def _flush(detector: Any, pending: list[tuple[int, _Miss]], params: InferParams, cache: ImageCache,
           results: dict[int, _Result]) -> None:
    """Run the detector on the pending frames (one batch per view), fuse the views, keep what
    ``params`` keeps, cache each frame's entry and store its result; empties ``pending``."""
    from detection.detector import predict_batch, predict_packed

    if not pending:
        return
    imgs = [m.img for _, m in pending]
    views = [[(d.boxes, d.scores, d.labels)] for d in
             predict_packed(detector, [m.packed for _, m in pending], [m.original for _, m in pending])]
    if "flip" in params.tta:
        for v, img, f in zip(views, imgs, predict_batch(detector, [hflip(i) for i in imgs], params.input_size)):
            v.append((unflip_boxes(f.boxes, img.shape[1]), f.scores, f.labels))
    for size in sorted({tuple(s) for s in params.tta_sizes}):
        for v, d in zip(views, predict_batch(detector, imgs, size)):
            v.append((d.boxes, d.scores, d.labels))
    for (image_id, m), v in zip(pending, views):
        boxes, scores, labels = v[0] if len(v) == 1 else fuse_views(v, m.img.shape[1], m.img.shape[0])
        b, s, lab = _filter(boxes, scores, labels, params)
        entry = _entry(b, s, lab, (m.img.shape[1], m.img.shape[0]))
        cache.put(key=m.key, entry=entry)
        results[image_id] = _Result.from_entry(entry)
    pending.clear()


def _prefetched(fn: Callable[[Any], Any], items: Iterable[Any], ahead: int, threads: int) -> Iterator[Any]:
    """``fn(item)`` for each item, in order: with ``threads=1`` computed up to ``ahead`` items in
    advance by one background thread (``concurrent.futures``; reading, hashing, PNG decoding and
    OpenCV resizing release the GIL, so they overlap the forward pass), with ``threads=0`` inline.
    Bounded, unlike ``Executor.map``, which would submit (and hold the pixels of) every frame at once."""
    if threads == 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="infer-prefetch") as pool:
        queued: deque[Future] = deque()
        try:
            for item in items:
                queued.append(pool.submit(fn, item))
                if len(queued) > ahead:
                    yield queued.popleft().result()
            while queued:
                yield queued.popleft().result()
        finally:
            for f in queued:
                f.cancel()


def prefetch_threads(device: str) -> int:
    """1 when a core is free to decode frames while the model runs, else 0 (decode inline).

    Free: the model runs on a GPU, or this process may use more CPU cores than torch's intra-op
    threads. Why not always: on 2 cores with torch on both, a third busy thread stalls torch's
    OpenMP workers at their barriers; measured on msrs-bench frames with the real YOLOX-nano
    (``benchmarks/infer_real.py``), the stage took 11.3 s with the thread against 9.5 s without.
    """
    import torch

    if str(device).startswith("cuda"):
        return 1
    return 1 if len(os.sched_getaffinity(0)) > torch.get_num_threads() else 0


def infer_frames(images: list[dict], root: Path, params: InferParams, detector: Any, cache: ImageCache,
                 report: StageReport, hash_memo: HashMemo | None = None) -> dict[int, _Result]:
    """Detections of every usable frame of ``images`` (COCO image entries), by image id.

    The one loop that runs a detector over frames: each frame is hashed, looked up in ``cache``
    (key: image bytes + ``detector.fingerprint`` + ``params.cache_params()``), else decoded by
    :mod:`core.images`, put through the test pipeline (built once) and batched
    (``params.batch_size`` frames per forward pass). That per-frame CPU work runs in a prefetch
    thread up to two batches ahead of the forward pass when a core is free for it
    (:func:`prefetch_threads`), else inline; results, the report and the cache are written in
    input order, so the output is the same either way (a frame whose content an earlier frame of
    this run already inferred is a cache hit, as it was sequentially).
    Frames that cannot be used are skipped and recorded in ``report`` (counted in its cache
    hits/misses otherwise). Raises InputError when not one of the files exists (a wrong image
    root, not bad frames).
    """
    from tqdm import tqdm

    from detection.detector import build_test_pipeline

    key_parts = {"model": detector.fingerprint, "params": params.cache_params()}
    pipeline = build_test_pipeline(detector, params.input_size)
    results: dict[int, _Result] = {}
    done: dict[str, int] = {}       # cache key -> the image id whose flush stored it, this run
    pending: list[tuple[int, _Miss]] = []

    def look(im: dict) -> _Result | _Miss | _Skip:
        return _lookup(resolve_image_path(im["file_name"], root), (im["width"], im["height"]), cache, key_parts,
                       hash_memo, pipeline)

    threads = prefetch_threads(detector.device)
    log.debug("infer: %s", "decoding in a prefetch thread" if threads else "decoding inline (no free core)")
    with contextlib.closing(_prefetched(look, images, 2 * params.batch_size, threads)) as got_all:
        for im, got in tqdm(zip(images, got_all), total=len(images), desc="infer", unit="img", disable=None):
            if isinstance(got, _Miss) and got.key in done and done[got.key] in results:
                got = results[done[got.key]]           # stored by an earlier batch: read back, as sequentially
            if isinstance(got, _Skip):
                report.skip_image(got.path, got.reason)
            elif isinstance(got, _Result):
                report.cache_hits += 1
                results[im["id"]] = got
            else:
                report.cache_misses += 1
                done[got.key] = im["id"]
                pending.append((im["id"], got))
                if len(pending) >= params.batch_size:
                    _flush(detector, pending, params, cache, results)
    _flush(detector, pending, params, cache, results)
    _refuse_missing_root(images, results, root)
    for s in report.skipped_images:
        log.warning("skipped %s: %s", s["image"], s["reason"])
    return results


def _refuse_missing_root(images: list[dict], results: dict[int, _Result], root: Path) -> None:
    """InputError when not one of the files exists: a wrong image root, not bad frames."""
    if images and not results and not any(resolve_image_path(im["file_name"], root).exists() for im in images):
        first = resolve_image_path(images[0]["file_name"], root)
        raise InputError(f"none of the {len(images)} images exist (first: {first})", str(root),
                         "relative file_names are resolved against --image-root (default: the COCO file's folder)")


def _infer_coco(images: list[dict], results: dict[int, _Result], detector: Any, params: InferParams) -> dict:
    """The stage's COCO output: the inferred images in input order, one annotation per kept detection
    (``xywh`` pixels, ``score``, ``source``, 0-based ``detector_label``), the detector's classes as
    categories 1..K. No paths in ``info``: this file's content keys later steps."""
    kept = [im for im in images if im["id"] in results]
    done = [results[im["id"]] for im in kept]
    # one call for the whole data set: per image, the numpy conversions cost more than a cache read
    labels = np.concatenate([r.labels for r in done]) if done else np.zeros(0, np.int64)
    extras = [{"score": s, "detector_label": lab} for s, lab in
              zip(np.concatenate([r.scores for r in done]).tolist() if done else [], labels.tolist())]
    anns = annotations(1, [im["id"] for im, r in zip(kept, done) for _ in range(len(r.labels))],
                       (labels + 1).tolist(), np.concatenate([r.boxes.reshape(-1, 4) for r in done]) if done
                       else np.zeros((0, 4)), extras, source=params.source)
    info = {"stage": "infer", "source": params.source, "detector": detector.description,
            "model_fingerprint": detector.fingerprint}
    return new_dataset(kept, anns, categories_from_names(tuple(detector.classes)), info)


def _start_report(inp: Path, params: InferParams, index: Path | None, cache_dir: Path, detector: Any) -> StageReport:
    from detection.detector import RANDOM_INIT, effective_test_size

    report = StageReport(stage="infer", inputs={"coco": str(inp)}, params=params.to_dict())
    if index is not None:
        report.inputs["index"] = str(index)
    report.models["detector"] = detector.description
    report.params["model_fingerprint"] = detector.fingerprint
    report.params["cache_dir"] = str(cache_dir)
    size = effective_test_size(detector, params.input_size)
    report.params["test_size"] = list(size) if size is not None else None      # [w, h] pixels actually used
    if str(detector.fingerprint).startswith(RANDOM_INIT):
        msg = "no checkpoint given: the detector has RANDOM weights (its detections are meaningless)"
        log.warning(msg)
        report.fallbacks.append(msg)
    return report


def _infer_chunk(images: list[dict], root: Path, params: InferParams, cache_dir: Path, fingerprint: str
                 ) -> dict[str, Any]:
    """On a Dask worker: fill the cache with one chunk's frames (:func:`infer_frames`); counts only.

    The worker's detector is loaded once per worker process (:func:`tasks.shard.worker_model`) and
    must be the one the stage fingerprinted (``fingerprint``): a checkpoint changed under the same
    path would otherwise fill the cache under another model's key, which the stage would not find.
    """
    from detection.detector import load_detector
    from tasks.shard import chunk_result, worker_model

    t0 = time.perf_counter()
    detector, loads = worker_model(f"infer:{fingerprint}:{params.device}",
                                   partial(load_detector, params.config, params.checkpoint, params.device))
    if detector.fingerprint != fingerprint:
        raise InputError("the detector a Dask worker built is not the stage's (another fingerprint: its files "
                         "changed meanwhile, or it has random weights, which differ per process)",
                         f"{params.config} + {params.checkpoint}", "run the stage again")
    report = StageReport(stage="infer")
    with contextlib.suppress(InputError):   # none of this chunk's files exist: the stage's own pass says so
        infer_frames(images, root, params, detector, ImageCache(cache_dir, CACHE_SCHEMA), report)
    return chunk_result(report, t0, loads)


def _shard_frames(images: list[dict], root: Path, params: InferParams, cache_dir: Path, detector: Any, given: bool,
                  compute: Compute, report: StageReport) -> None:
    """Fill the cache for ``images`` by chunks on Dask workers (see :mod:`tasks.shard`); the sharding goes
    into ``report.compute``. Not sharded (a fallback, logged and recorded): a detector handed in by the
    caller (the workers would have to rebuild it from ``params``, with full trust in the checkpoint) and
    one with random weights (each process would draw other weights)."""
    from detection.detector import RANDOM_INIT
    from tasks.compute import shard_session
    from tasks.shard import chunked

    if given or str(detector.fingerprint).startswith(RANDOM_INIT):
        msg = (f"compute: the detector {'was passed in already loaded' if given else 'has random weights'}, "
               "so its frames were inferred in this process")
        log.warning(msg)
        report.fallbacks.append(msg)
        return
    with shard_session(compute) as shards:
        chunks = chunked(images, shards.params.chunk_size, params.batch_size)
        report.compute = shards.run("infer", _infer_chunk, chunks, root, params, cache_dir, detector.fingerprint)


def run_infer(inp: Path, out: Path, params: InferParams, *, cache_dir: Path, index: Path | None = None,
              image_root: Path | None = None, detector: Any = None, hash_memo: HashMemo | None = None,
              compute: Compute = None) -> StageReport:
    """Run the detector over the images of COCO file ``inp``; write COCO detections to ``out``.

    The only code that runs a detector over a data set: pseudo-labelling, the pipeline's ``val``
    and ``eval`` steps, the nightly champion's re-scoring, ``rgb2thermal predict`` and a
    training's test predictions all come here (eval through :func:`infer_results`).

    Args:
        inp: COCO file naming the frames (``file_name`` absolute, or relative to ``image_root``).
        out: the output COCO file: the same images (minus skipped ones), ``categories`` = the
            detector's classes with 1-based ids in detector class order, one annotation per kept
            detection (``bbox`` xywh pixels rounded to 1e-3, ``score`` rounded to 1e-6,
            ``source``, ``detector_label`` = 0-based class index).
        params: how to run the detector (:class:`InferParams`).
        cache_dir: the per-image cache folder (required: a default relative to the current folder
            would put caches wherever a command happened to run).
        index: accepted for the common stage signature and unused (the COCO file names the images).
        image_root: folder of relative ``file_name``s; default the folder of ``inp``.
        detector: an already loaded ``detection.detector.Detector`` used instead of loading
            ``params.config``/``params.checkpoint`` (a flow that infers several files loads it once;
            the champion loads its archive with ``trusted=False``). Its fingerprint keys the cache.
        hash_memo: image hashes remembered by stat (:class:`core.hashing.HashMemo`), so an unchanged
            cached frame is not even read.
        compute: where the frames are inferred (:class:`tasks.compute.ComputeParams`, or a running
            :class:`tasks.shard.Shards`): sharded over Dask, chunks of frames fill the cache on the
            workers first, then this pass is all cache hits (same output bytes). None: here.

    Returns:
        The stage report (also written to ``<out>.report.json``): cache hits/misses, skipped frames,
        ``params.test_size`` = the ``[w, h]`` test input in pixels the detector ran at, ``compute`` =
        the sharding (workers, chunks, per-chunk seconds, scheduler) when it was sharded.
    """
    from detection.detector import load_detector

    t0 = time.perf_counter()
    inp, out, cache_dir = Path(inp), Path(out), Path(cache_dir)
    root = Path(image_root) if image_root is not None else inp.parent
    ds = load_dataset(inp)
    refuse_escaping_file_names(ds, root, inp)      # before the detector loads: nothing read outside root
    given = detector is not None
    if detector is None:
        detector = load_detector(params.config, params.checkpoint, params.device)
    report = _start_report(inp, params, index, cache_dir, detector)
    if compute is not None and compute.sharded:
        _shard_frames(ds["images"], root, params, cache_dir, detector, given, compute, report)
    results = infer_frames(ds["images"], root, params, detector, ImageCache(cache_dir, CACHE_SCHEMA), report, hash_memo)
    coco = _infer_coco(ds["images"], results, detector, params)
    save_dataset(out, coco, indent=None)
    report.counts = {"images_in": len(ds["images"]), "images_out": len(coco["images"]),
                     "images_inferred": report.cache_misses, "images_cached": report.cache_hits,
                     "images_skipped": len(report.skipped_images), "detections": len(coco["annotations"])}
    report.outputs = {"coco": str(out), "report": str(report_path(out))}
    report.seconds = round(time.perf_counter() - t0, 3)
    report.save(report_path(out))
    return report


def coco_results(infer_coco: dict, gt: dict, where: str = "infer output") -> list[dict]:
    """COCO *results* (what ``COCOeval`` scores) for ``gt``'s categories from an infer-stage output.

    Categories are matched by class name (``detection.detector.label_map_by_name``): detector classes
    that are no category of ``gt`` are dropped on purpose (an 80-class COCO teacher scored on
    person/car). Boxes stay as the stage wrote them (``xywh`` pixels, 1e-3; scores 1e-6: one
    rounding for every use); a box with zero width or height is dropped (COCO cannot score it).
    Image ids are the stage's, i.e. ``gt``'s when the stage ran on ``gt``.
    """
    from detection.detector import label_map_by_name

    classes = [c["name"] for c in sorted(infer_coco["categories"], key=lambda c: c["id"])]
    label_map = label_map_by_name(classes, gt["categories"])
    out = []
    for a in infer_coco["annotations"]:
        cat = label_map.get(int(a["detector_label"]))
        if cat is None or a["bbox"][2] <= 0 or a["bbox"][3] <= 0:
            continue
        out.append({"image_id": int(a["image_id"]), "category_id": cat, "bbox": list(a["bbox"]),
                    "score": float(a["score"])})
    return validate_results(out, where, gt)


def infer_results(gt: Path, out: Path, params: InferParams, *, cache_dir: Path, image_root: Path | None = None,
                  detector: Any = None, hash_memo: HashMemo | None = None,
                  compute: Compute = None) -> tuple[list[dict], StageReport]:
    """:func:`run_infer` over the frames of ground-truth file ``gt`` (its COCO output at ``out``),
    and the COCO results for ``gt``'s categories (:func:`coco_results`), for ``tasks.evaluate``.

    Score floor: ``min(params.min_score, EVAL_MIN_SCORE)``. COCO AP integrates precision over the
    whole ranking, so dropping the low-score tail lowers it: the COCO nano teacher on the 83
    msrs-bench test frames scores mAP_50 0.426 with its own 0.01 floor and 0.401 with the infer
    stage's default 0.05 (car 0.380 vs 0.349). Every detection at or above ``params.min_score`` is
    the same box and score as pseudo-labelling gives (same size, TTA, decoder and rounding);
    the report's ``params.min_score`` says which floor was used.

    A frame that cannot be read is skipped and recorded in the report, as in every infer run: it
    has no detections, so its ground-truth boxes count as misses (the score can only be lower,
    never silently better); callers put ``report.skipped_images`` in their own record. ``compute``:
    where the frames are inferred (see :func:`run_infer`).
    """
    floor = min(params.min_score, EVAL_MIN_SCORE)
    report = run_infer(gt, out, params if floor == params.min_score else params.replace(min_score=floor),
                       cache_dir=cache_dir, image_root=image_root, detector=detector, hash_memo=hash_memo,
                       compute=compute)
    return coco_results(load_dataset(out), load_dataset(gt), str(out)), report


#: How the pipeline runs this stage (:class:`core.stage_spec.StageSpec`): the model a step reads
#: gives config and checkpoint, the step's ``source`` option the provenance tag.
STAGE_SPEC = StageSpec(kind="infer", run=run_infer, params=InferParams, output="infer.json", inputs="images",
                       uses=("cache_dir", "hash_memo", "image_root", "compute"), section="infer",
                       wired={"config": "model_config", "checkpoint": "model_checkpoint", "source": "source"})
