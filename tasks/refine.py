"""Stage ``refine``: tighten warped pseudo-label boxes on the thermal image (SAM2 or classical).

Why: a box warped from RGB through a homography is only as good as the registration and the
RGB detector; on the thermal frame it is often loose or shifted. Segmenting the object inside
the box and taking the mask's tight box fixes much of that — but a segmenter can also grab a
whole road or a shadow, so every refined box goes through a policy:

* **replace** the box by the mask's tight box when the refiner's score ≥ its threshold *and*
  IoU(new box, prompt box) ≥ ``min_iou`` *and* the new box is at least ``min_size`` px wide
  and high;
* otherwise **keep** the prompt box or **drop** it (``on_reject``).

Every output box records ``refine: {method, score, iou_to_prompt, decision, reason,
prompt_bbox}`` (``prompt_bbox`` is the input COCO ``[x, y, w, h]``), so nothing is silently
changed. Methods: ``sam2`` (:mod:`tasks.refine_sam2`, user's config + checkpoint) or
``classical`` (:mod:`tasks.refine_classical`). With ``method="auto"`` and no SAM2 checkpoint
the stage logs a WARNING, uses the classical refiner and records that fallback in the report
(``fallbacks``, ``models``) and in every box (``method: "classical"``).

Cache: per image, content-addressed: key = image bytes' sha256 + refiner fingerprint (model
config + checkpoint hash, or the classical parameters) + the prompt boxes. The cached value is
the refiner's *raw* output (new boxes + scores), before the policy, so changing
``min_iou``/thresholds/``on_reject`` re-runs no model. The cache is
:class:`core.image_cache.ImageCache` in the folder the caller names (``cache_dir``, required: the
pipeline's cache root, or beside the output for ``rgb2thermal stage refine``; never a folder
relative to wherever the process was started); images are decoded by :mod:`core.images` (SAM2 gets
``to_rgb_u8``, the classical refiner ``to_gray_u8``: 16-bit frames are stretched between their
0.5/99.5 percentiles). Memory is flat in the number of images: the input COCO file is read
element by element and spooled to an unlinked temporary file, images are decoded one batch at a
time, and the output is written as it is made (``core.coco.spool_dataset`` / ``CocoWriter``).

Boxes are ``xyxy`` float pixels internally, COCO ``xywh`` in files (see ``core.boxes``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from core import coco
from core.boxes import clip, xywh_to_xyxy, xyxy_to_xywh
from core.errors import InputError
from core.hashing import HashMemo, json_sha256, sha256_read_once
from core.image_cache import ImageCache
from core.images import read_error, read_image, size_mismatch, to_gray_u8, to_rgb_u8
from core.stage_params import PathStr, StageParams
from core.stage_report import StageReport, report_path
from core.stage_spec import StageSpec
from tasks.compute import Compute
from tasks.refine_classical import ClassicalConfig
from tasks.refine_policy import apply_policy
from tasks.refine_sam2 import DEFAULT_CONFIG, Sam2Config

log = logging.getLogger(__name__)

STAGE = "refine"
#: Bumped whenever the cache key material, the entry format or its meaning changes
#: (/3: ``core.image_cache`` entries, one ``core.images`` decoder).
CACHE_SCHEMA = "rgb2thermal.refine-cache/3"


class RefineParams(StageParams):
    """Parameters of the refine stage (validated at construction).

    - ``method``: ``auto`` (SAM2 when a checkpoint is given, else classical with a loud
      WARNING + recorded fallback), ``sam2`` (error without a checkpoint), ``classical``, or
      ``none`` (boxes pass through unchanged: the measured choice where no refiner helps).
    - ``sam2_config``/``sam2_checkpoint``/``device``: the SAM2 model (see ``Sam2Config``).
    - ``sam2_random_weights``: build SAM2 with random weights (tests/timing only; recorded).
    - ``sam2_score_threshold``: minimum SAM2 predicted mask IoU (0..1) to replace a box.
    - ``classical_score_threshold``: minimum Otsu separability (0..1) to replace a box.
    - ``min_iou``: minimum IoU between the new box and the prompt box to replace it
      (guards against SAM grabbing the road, a shadow or a neighbour).
    - ``min_size``: minimum width and height (px) of a replacement box.
    - ``on_reject``: what happens to a box that is not replaced: ``keep`` or ``drop``.
    - ``image_batch_size``/``max_boxes_per_call``/``mask_threshold``: SAM2 batching/binarising.
    - ``classical_enlarge``: how much the classical refiner enlarges the prompt box (factor, 1..4).
    - ``use_cache``: read/write the per-image cache.
    - ``image_root``: folder that relative image ``file_name``s are relative to (default: the
      input COCO file's folder).
    - ``classes``: refine only boxes of these categories (names); the others pass through
      unchanged, marked ``decision: keep, reason: class_not_refined``. None (default): every
      class. Why: the refiner can help one class and hurt another (msrs-bench RGB labels: person
      precision up, car boxes worse; ``benchmarks/RESULTS.md``).
    """

    method: Literal["auto", "sam2", "classical", "none"] = "auto"
    sam2_config: PathStr = DEFAULT_CONFIG
    sam2_checkpoint: PathStr | None = None
    sam2_random_weights: bool = False
    device: str = "cpu"
    sam2_score_threshold: float = Field(default=0.5, ge=0, le=1)
    classical_score_threshold: float = Field(default=0.3, ge=0, le=1)
    min_iou: float = Field(default=0.5, ge=0, le=1)
    min_size: float = Field(default=2.0, ge=0)
    on_reject: Literal["keep", "drop"] = "keep"
    image_batch_size: int = Field(default=1, ge=1)
    max_boxes_per_call: int = Field(default=64, ge=1)
    mask_threshold: float = 0.0
    classical_enlarge: float = Field(default=1.2, ge=1, le=4)
    use_cache: bool = True
    image_root: PathStr | None = None
    classes: list[str] | None = None

    @model_validator(mode="after")
    def _method_fits_checkpoint(self) -> RefineParams:
        """Method and checkpoint must agree: no silent fallback when SAM2 was asked for."""
        if self.method == "sam2" and self.sam2_checkpoint is None and not self.sam2_random_weights:
            raise ValueError("method 'sam2' needs a SAM2 checkpoint (pass --sam2-checkpoint PATH, "
                             "or --method auto/classical)")
        if self.method in ("classical", "none") and self.sam2_checkpoint is not None:
            raise ValueError(f"a SAM2 checkpoint was given but method is '{self.method}' "
                             "(drop the checkpoint or use --method sam2/auto)")
        if self.uses_sam2() and self.sam2_checkpoint is not None and not Path(self.sam2_checkpoint).is_file():
            raise ValueError(f"SAM2 checkpoint not found: {self.sam2_checkpoint} (check the path of the SAM2 .pt file)")
        self.classical_config()          # the refiners' own configs must accept these values too
        if self.uses_sam2():
            self.sam2_cfg()
        return self

    def uses_sam2(self) -> bool:
        return self.method == "sam2" or (self.method == "auto" and
                                         (self.sam2_checkpoint is not None or self.sam2_random_weights))

    def sam2_cfg(self) -> Sam2Config:
        return Sam2Config(config=self.sam2_config, checkpoint=self.sam2_checkpoint, device=self.device,
                          random_weights=self.sam2_random_weights and self.sam2_checkpoint is None,
                          mask_threshold=self.mask_threshold, max_boxes_per_call=self.max_boxes_per_call,
                          image_batch_size=self.image_batch_size)

    def classical_config(self) -> ClassicalConfig:
        return ClassicalConfig(enlarge=self.classical_enlarge)


class _Refiner:
    """The chosen refiner behind one interface: ``run(images, boxes) -> [(new, scores)]``."""

    def __init__(self, params: RefineParams, sam2_refiner: Any = None) -> None:
        self.params = params
        if params.uses_sam2():
            from tasks.refine_sam2 import Sam2Refiner

            self.sam2 = sam2_refiner or Sam2Refiner.load(params.sam2_cfg())
            self.method = "sam2"
            self.fingerprint = self.sam2.fingerprint
            self.description = self.sam2.description
            self.score_threshold = params.sam2_score_threshold
            self.batch = params.image_batch_size
        else:
            self.sam2 = None
            self.method = "classical"
            cfg = asdict(params.classical_config())
            self.fingerprint = json_sha256({"method": "classical", "version": 2, **cfg})
            self.description = ("classical Otsu refiner (no model): deviation from the local background inside "
                                f"the box enlarged x{params.classical_enlarge}, Otsu/noise threshold, components "
                                "at the centre; score = Otsu separability")
            self.score_threshold = params.classical_score_threshold
            self.batch = 1

    def run(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.sam2 is not None:
            return self.sam2.refine_images([to_rgb_u8(im) for im in images], boxes)
        from tasks.refine_classical import refine_boxes

        cfg = self.params.classical_config()
        return [refine_boxes(to_gray_u8(im), b, cfg) for im, b in zip(images, boxes)]


def resolve_image_path(image: dict, coco_path: Path, image_root: str | None, pairs: dict[str, Path] | None) -> Path:
    """Where an image's file is: the index's thermal path (by ``pair_id``), else ``file_name``;
    either absolute, or relative to ``image_root`` / the COCO file's folder (the pipeline's index
    and COCO files hold paths relative to its workspace, its ``image_root``)."""
    p = pairs[image["pair_id"]] if pairs is not None and image.get("pair_id") in pairs else Path(image["file_name"])
    if p.is_absolute():
        return p
    return Path(image_root) / p if image_root else coco_path.parent / p


def _index_thermal_paths(index: Path | None) -> dict[str, Path] | None:
    if index is None:
        return None
    from data.index import load_index

    return {p.pair_id: Path(p.thermal_path) for p in load_index(index).pairs}


def raw_key(cache: ImageCache, image_sha: str, fingerprint: str, prompts: np.ndarray) -> str:
    """Cache key of one image's raw refiner output: image content, refiner, clipped prompt boxes."""
    return cache.key(image=image_sha, refiner=fingerprint, boxes=np.round(prompts, 3).tolist())


def _parse_raw(entry: dict) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``(new boxes (N, 4) xyxy with NaN rows where nothing was found, scores (N,), (width, height))``."""
    new = np.array([[np.nan if v is None else v for v in row] for row in entry["boxes"]],
                   dtype=np.float64).reshape(-1, 4)
    return new, np.asarray(entry["scores"], dtype=np.float64), (int(entry["size"][0]), int(entry["size"][1]))


def raw_get(cache: ImageCache, key: str, n: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
    """The cached raw output for ``n`` prompt boxes (see :func:`_parse_raw`), or None when absent."""
    def valid(entry: dict) -> bool:
        new, scores, _ = _parse_raw(entry)
        return len(new) == len(scores) == n

    entry = cache.get(key, valid)
    return None if entry is None else _parse_raw(entry)


def _raw_put(cache: ImageCache, key: str, new: np.ndarray, scores: np.ndarray, size: tuple[int, int]) -> None:
    """One image's refiner output (before the keep/replace policy) and the image's (width, height)."""
    rows = [[None if not np.isfinite(v) else float(v) for v in row] for row in new]
    cache.put(key, {"boxes": rows, "scores": [float(s) for s in scores], "size": list(size)})


@dataclass
class _Run:
    """What every image of one refine run shares: where its file is, the refiner, its cache, the report."""

    inp: Path
    params: RefineParams
    refiner: _Refiner
    cache: ImageCache
    pairs: dict[str, Path] | None
    hash_memo: HashMemo | None
    report: StageReport
    skipped: dict[int, str] = field(default_factory=dict)   # image id -> why its boxes were dropped


def run_refine(inp: Path, out: Path, params: RefineParams, *, index: Path | None = None,
               cache_dir: Path, sam2_refiner: Any = None, hash_memo: HashMemo | None = None,
               compute: Compute = None) -> StageReport:
    """Refine the boxes of the thermal COCO file ``inp``; write ``out`` and ``<out>.report.json``.

    ``index`` (optional): a paired index; image files are then found by ``pair_id``.
    ``sam2_refiner`` (optional): an already loaded :class:`tasks.refine_sam2.Sam2Refiner`, so a
    flow or benchmark that refines several files loads SAM2 once (its fingerprint keys the cache).
    Images that cannot be read are skipped (with their boxes), listed in ``skipped_images``,
    and the run continues. ``hash_memo`` (optional): image hashes remembered by stat, so an
    unchanged image whose result is cached is neither read nor decoded (the cache entry holds
    the image size, checked against the COCO file). ``compute`` (optional): shard the images over
    Dask (:class:`tasks.compute.ComputeParams` or a running :class:`tasks.shard.Shards`): chunks
    fill the cache on the workers, then this pass is all cache hits (same output bytes; the
    images to refine and their boxes are then gathered in memory to be sent to the workers).

    Memory is flat in the number of images: the input is read element by element and spooled to
    an unlinked temporary file beside ``out`` (:func:`core.coco.spool_dataset`), images are read
    back one batch at a time, and the output is written as it is made (:class:`core.coco.CocoWriter`,
    the same bytes as writing the whole dataset at once).
    """
    t0 = time.perf_counter()
    inp, out = Path(inp), Path(out)
    root = params.image_root or inp.parent
    report = StageReport(stage=STAGE, inputs={"coco": str(inp)}, outputs={"coco": str(out)},
                         params=params.to_dict())
    if index is not None:
        report.inputs["index"] = str(index)
    if params.method == "none":
        ds = coco.load_dataset(inp)
        coco.refuse_escaping_file_names(ds, root, inp)
        return _pass_through(ds, out, report, t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    with coco.spool_dataset(inp, spool_dir=out.parent,
                            image_check=lambda i, im: coco.refuse_escaping_file_name(i, im, root, inp)) as ds:
        unrefined = _unrefined_categories(ds.top["categories"], params.classes, inp)
        run = _Run(inp, params, _start_refiner(params, sam2_refiner, report), ImageCache(Path(cache_dir), CACHE_SCHEMA),
                   _index_thermal_paths(index), hash_memo, report)
        passed = np.isin(ds.ann_category, unrefined) if unrefined else np.zeros(len(ds.ann_category), bool)
        n = {"images": len(ds.image_span), "images_refined": 0, "boxes_in": len(ds.ann_span),
             "replace": 0, "keep": int(passed.sum()), "drop": 0, "not_refined": int(passed.sum())}
        info = dict(ds.top.get("info") or {})
        info["refine"] = {"method": run.refiner.method, "model": run.refiner.description,
                          "fallback": bool(report.fallbacks)}
        extra = {k: v for k, v in ds.top.items() if k not in ("info", "categories")}
        if compute is not None and compute.sharded:
            _shard_images(run, _items_to_refine(ds, passed), sam2_refiner is not None, compute, Path(cache_dir))
        with coco.CocoWriter(out, info, ds.top["categories"], extra) as writer:
            _refine_all(run, ds, passed, writer, n)
            _write_passed(run, ds, passed, writer, n)
    n["boxes_out"] = writer.n_annotations
    n["images_skipped"] = len(report.skipped_images)
    report.counts = {k: int(v) for k, v in n.items()}
    report.seconds = round(time.perf_counter() - t0, 3)
    report.save(report_path(out))
    return report


def _write_passed(run: _Run, ds: coco.SpooledDataset, passed: np.ndarray, writer: coco.CocoWriter,
                  n: dict[str, int]) -> None:
    """The boxes of classes not refined, unchanged (their ``refine`` record says why). Those of an
    image the run skipped go with it, counted under the image's reason (``run.skipped``), so no
    output box points at an image the output does not have."""
    for j in np.flatnonzero(passed):
        a = ds.annotation(j)
        if (why := run.skipped.get(a["image_id"])) is not None:
            run.report.add_dropped(why, 1)
            n["keep"] -= 1
            n["not_refined"] -= 1
            continue
        writer.add_annotation({**a, "refine": {"method": "none", "decision": "keep", "reason": "class_not_refined",
                                               "prompt_bbox": list(a["bbox"])}})


def _items_to_refine(ds: coco.SpooledDataset, passed: np.ndarray) -> list[tuple[dict, list[dict]]]:
    """(COCO image, its boxes to refine) for every image that has any, in input order (what the
    Dask chunks carry)."""
    order, starts = ds.annotations_by_image()
    items = []
    for i in range(len(ds.image_span)):
        anns = [ds.annotation(j) for j in order[starts[i]:starts[i + 1]] if not passed[j]]
        if anns:
            items.append((ds.image(i), anns))
    return items


def _refine_all(run: _Run, ds: coco.SpooledDataset, passed: np.ndarray, writer: coco.CocoWriter,
                n: dict[str, int]) -> None:
    """Every image in input order, its boxes to refine gathered from the spool; refined a batch of
    ``run.refiner.batch`` images with boxes at a time (:func:`_flush`)."""
    from tqdm import tqdm

    order, starts = ds.annotations_by_image()
    window: list[tuple[dict, list[dict]]] = []
    todo = 0
    for i in tqdm(range(len(ds.image_span)), desc=f"refine ({run.refiner.method})", unit="img", disable=None):
        anns = [ds.annotation(j) for j in order[starts[i]:starts[i + 1]] if not passed[j]]
        if not anns and not window:
            writer.add_image(ds.image(i))          # nothing to refine and nothing before it waiting
            continue
        window.append((ds.image(i), anns))
        todo += bool(anns)
        if todo >= run.refiner.batch:
            _flush(run, window, writer, n)
            todo = 0
    _flush(run, window, writer, n)


def _flush(run: _Run, window: list[tuple[dict, list[dict]]], writer: coco.CocoWriter, n: dict[str, int]) -> None:
    """Refine the images of ``window`` that have boxes (one refiner call), write every image of it
    in input order (a skipped one is left out, with its boxes) and its output boxes; empties ``window``."""
    todo = [im for im, anns in window if anns]
    results = _raw_results(run, todo, {im["id"]: anns for im, anns in window if anns}) if todo else {}
    for im, anns in window:
        if anns and im["id"] not in results:
            continue
        writer.add_image(im)
        if anns:
            n["images_refined"] += 1
            for a in _decide(run, im, anns, *results[im["id"]], n):
                writer.add_annotation(a)
    window.clear()


def _refine_chunk(chunk: tuple[list[tuple[dict, list[dict]]], dict[str, Path] | None], inp: Path,
                  params: RefineParams, cache_dir: Path, fingerprint: str) -> dict[str, Any]:
    """On a Dask worker: the refiner's raw output for one chunk's images into the cache; counts only.

    ``chunk``: ((COCO image, its boxes to refine) per image, the index's thermal paths of these
    images by ``pair_id`` or None without an index). The refiner is built once per worker process
    (:func:`tasks.shard.worker_model`) and must have the stage's ``fingerprint``.
    """
    from tasks.shard import chunk_result, worker_model

    t0 = time.perf_counter()
    items, pairs = chunk
    refiner, loads = worker_model(f"refine:{fingerprint}:{params.device}", partial(_Refiner, params))
    if refiner.fingerprint != fingerprint:
        raise InputError("the refiner a Dask worker built is not the stage's (another fingerprint: its files "
                         "changed meanwhile, or it has random weights, which differ per process)",
                         str(params.sam2_checkpoint), "run the stage again")
    run = _Run(inp, params, refiner, ImageCache(cache_dir, CACHE_SCHEMA), pairs, None, StageReport(stage=STAGE))
    anns = {im["id"]: boxes for im, boxes in items}
    images = [im for im, _ in items]
    for k in range(0, len(images), refiner.batch):
        _raw_results(run, images[k:k + refiner.batch], anns)
    return chunk_result(run.report, t0, loads)


def _shard_images(run: _Run, items: list[tuple[dict, list[dict]]], given: bool, compute: Compute,
                  cache_dir: Path) -> None:
    """Fill the refine cache for ``items`` ((image, its boxes to refine) pairs) by chunks on Dask
    workers (:mod:`tasks.shard`); the sharding
    goes into the report's ``compute``. Not sharded (logged and recorded as a fallback): a refiner
    handed in already loaded (workers would rebuild it) and ``use_cache: false`` (nothing to fill)."""
    from tasks.compute import shard_session
    from tasks.shard import chunked

    if given or not run.params.use_cache:
        msg = ("compute: " + ("the SAM2 refiner was passed in already loaded" if given else "refine.use_cache is off")
               + ", so the images were refined in this process")
        log.warning(msg)
        run.report.fallbacks.append(msg)
        return
    with shard_session(compute) as shards:
        chunks = chunked(items, shards.params.chunk_size, run.refiner.batch)
        pairs = [None if run.pairs is None else {im["pair_id"]: run.pairs[im["pair_id"]] for im, _ in c
                                                  if im.get("pair_id") in run.pairs} for c in chunks]
        run.report.compute = shards.run("refine", _refine_chunk, list(zip(chunks, pairs)), run.inp,
                                        run.params, cache_dir, run.refiner.fingerprint)


def _start_refiner(params: RefineParams, sam2_refiner: Any, report: StageReport) -> _Refiner:
    """The refiner the parameters ask for; a fallback (classical for auto, random SAM2 weights) is logged and recorded."""
    if params.method == "auto" and not params.uses_sam2():
        msg = ("no SAM2 checkpoint configured: boxes are refined by the CLASSICAL Otsu refiner, not SAM2 "
               "(pass --sam2-checkpoint to use SAM2)")
        log.warning("%s", msg)
        report.fallbacks.append(msg)
    refiner = _Refiner(params, sam2_refiner)
    report.models["refiner"] = refiner.description
    report.params["refiner_fingerprint"] = refiner.fingerprint
    if refiner.method == "sam2" and params.sam2_random_weights and params.sam2_checkpoint is None:
        report.fallbacks.append("SAM2 ran with RANDOM weights (requested for testing): refined boxes are meaningless")
    return refiner


def _skip(run: _Run, image_id: int, path: Path, reason: str, dropped_as: str, n_boxes: int) -> None:
    """An image the run goes on without: listed in the report with its ``n_boxes`` boxes dropped, and
    logged; ``run.skipped`` remembers it, so its boxes of classes not refined are dropped too."""
    run.report.skip_image(path, reason)
    run.report.add_dropped(dropped_as, n_boxes)
    run.skipped[image_id] = dropped_as
    log.warning("refine: skipping %s (%s)", path, reason)


def _lookup(run: _Run, im: dict, anns: list[dict]
            ) -> tuple[tuple[np.ndarray, np.ndarray] | None, tuple[np.ndarray, np.ndarray, str] | None]:
    """One image: ``(cached raw result, None)``, or ``(None, (decoded image, clipped prompt boxes
    xyxy px, cache key))`` to refine, or ``(None, None)`` when the image is skipped."""
    path = resolve_image_path(im, run.inp, run.params.image_root, run.pairs)
    size = (im["width"], im["height"])
    prompts = clip(xywh_to_xyxy([a["bbox"] for a in anns]), *size)
    try:
        sha, data = sha256_read_once(path, run.hash_memo)
    except OSError as exc:
        _skip(run, im["id"], path, read_error(exc), "unreadable_image", len(anns))
        return None, None
    key = raw_key(run.cache, sha, run.refiner.fingerprint, prompts)
    hit = raw_get(run.cache, key, len(prompts)) if run.params.use_cache else None
    if hit is not None and hit[2] == size:
        run.report.cache_hits += 1
        return hit[:2], None
    img, err = read_image(path, data)
    del data
    if img is None:
        _skip(run, im["id"], path, err, "unreadable_image", len(anns))
        return None, None
    if reason := size_mismatch((img.shape[1], img.shape[0]), size):
        _skip(run, im["id"], path, reason, "image_size_mismatch", len(anns))
        return None, None
    run.report.cache_misses += 1
    return None, (img, prompts, key)


def _raw_results(run: _Run, batch: list[dict], anns_by_image: dict[int, list[dict]]
                 ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Image id -> the refiner's raw (new boxes xyxy px, scores) for one batch: cached, or computed
    in one refiner call over the batch's misses (then cached); skipped images are absent."""
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    misses: list[tuple[dict, np.ndarray, np.ndarray, str]] = []
    for im in batch:
        hit, miss = _lookup(run, im, anns_by_image[im["id"]])
        if hit is not None:
            results[im["id"]] = hit
        elif miss is not None:
            misses.append((im, *miss))
    if misses:
        computed = run.refiner.run([m[1] for m in misses], [m[2] for m in misses])
        for (im, img, _, key), (new, scores) in zip(misses, computed):
            results[im["id"]] = (new, scores)
            if run.params.use_cache:
                _raw_put(run.cache, key, new, scores, (img.shape[1], img.shape[0]))
    return results


def _decide(run: _Run, im: dict, anns: list[dict], new: np.ndarray, scores: np.ndarray,
            n: dict[str, int]) -> list[dict]:
    """The policy over one image's raw result: its output boxes (COCO xywh px, each with its
    ``refine`` record); decisions are counted in ``n``, drops in the report."""
    prompts = xywh_to_xyxy([a["bbox"] for a in anns])
    clipped = clip(prompts, im["width"], im["height"])
    params = run.params
    pol = apply_policy(clipped, new, scores, score_threshold=run.refiner.score_threshold,
                       min_iou=params.min_iou, min_size=params.min_size, on_reject=params.on_reject)
    out: list[dict] = []
    for a, box, dec, reason, iou, s, prompt in zip(anns, pol.boxes, pol.decisions, pol.reasons, pol.ious,
                                                  scores, prompts):
        n[dec] += 1
        if dec == "drop":
            run.report.add_dropped(reason or "rejected")
            continue
        final = box if dec == "replace" else prompt
        x, y, bw, bh = (round(float(v), 3) for v in xyxy_to_xywh([final])[0])
        refine_info = {"method": run.refiner.method, "score": round(float(s), 4),
                       "iou_to_prompt": round(float(iou), 4), "decision": dec, "reason": reason,
                       "prompt_bbox": list(a["bbox"])}
        out.append({**a, "bbox": [x, y, bw, bh], "area": round(bw * bh, 3), "refine": refine_info})
    return out


def _unrefined_categories(categories: list[dict], classes: list[str] | None, inp: Path) -> list:
    """The ids of the categories ``classes`` leaves out (their boxes pass through, marked as not refined)."""
    if classes is None:
        return []
    names = {c["id"]: c["name"] for c in categories}
    if unknown := sorted(set(classes) - set(names.values())):
        raise InputError(f"refine.classes names {unknown}, not categories of the labels ({sorted(names.values())})",
                         str(inp), "list target class names in refine.classes, or leave it unset to refine all")
    return [cid for cid, name in names.items() if name not in classes]


def _pass_through(ds: dict, out: Path, report: StageReport, t0: float) -> StageReport:
    """``method: none``: every box unchanged, marked ``refine.method = "none"`` (no image is read)."""
    for a in ds["annotations"]:
        a["refine"] = {"method": "none", "decision": "keep", "reason": None, "prompt_bbox": list(a["bbox"])}
    ds["info"] = {**(ds.get("info") or {}), "refine": {"method": "none", "model": "none", "fallback": False}}
    report.models["refiner"] = "none (boxes unchanged)"
    coco.save_dataset(out, ds)
    n = len(ds["annotations"])
    report.counts = {"images": len(ds["images"]), "images_refined": 0, "boxes_in": n, "replace": 0, "keep": n,
                     "drop": 0, "boxes_out": n, "images_skipped": 0}
    report.seconds = round(time.perf_counter() - t0, 3)
    report.save(report_path(out))
    return report


#: How the pipeline runs this stage (:class:`core.stage_spec.StageSpec`): image paths are relative to
#: the workspace.
STAGE_SPEC = StageSpec(kind="refine", run=run_refine, params=RefineParams, output="refined.json", inputs="labels",
                       uses=("index", "cache_dir", "hash_memo", "compute"), section="refine", wired={"image_root": "image_root"})
