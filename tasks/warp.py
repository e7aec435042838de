"""Stage ``warp``: pseudo-labels on RGB images -> boxes on the paired thermal images.

Why per image: a merged dataset holds frames of several versions (FLIR v1, v2, ...) and, within
a version, RGB frames of several resolutions, each with its own RGB->thermal homography. So
every image looks up ITS pair in the index (thermal file, sizes, version) and ITS homography in
the registry by ``(version, RGB size)``; mixing these up is the bug that cost the seed lab weeks.

The box math is the registration module's (``registration.warp.warp_boxes``: 4 corners through
H, enclosing box, clip, drop ``invalid``/``outside``/``too_small``); this stage only feeds it
and keeps the books: dropped boxes counted by reason, and every kept box records its
provenance (``source``, ``score``, the original RGB box ``rgb_bbox`` in COCO xywh, and ``warp``:
version, RGB size, homography method and measured error, visible fraction).

Boxes are ``xyxy`` float pixels internally (continuous coordinates, (0, 0) = top-left corner of
the top-left pixel), COCO ``xywh`` in files. Paired images share one integer image id, so the
output's image ids are the input's.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from core.boxes import xywh_to_xyxy
from core.coco import annotations, load_dataset, new_dataset, save_dataset
from core.errors import InputError
from core.stage_params import StageParams
from core.stage_report import StageReport, report_path
from core.stage_spec import StageSpec

log = logging.getLogger(__name__)

#: Annotation keys rebuilt by the warp; every other key is provenance and is carried over.
_REBUILT = {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}


class WarpParams(StageParams):
    """Where the homographies are and when a warped box is dropped.

    - ``registry_dir``: the homography registry folder (one YAML per dataset version); None =
      the registry shipped in the package (``registration/homographies``).
    - ``min_size``: minimum width and height of a warped, clipped box, in thermal pixels.
    - ``min_visible_fraction``: minimum share of the warped box's area inside the thermal
      image, in [0, 1].
    - ``max_homography_error_px``: largest trusted measured or held-out error of a registry entry,
      thermal pixels (:func:`registration.registry.assess_entry`); a worse entry stops the stage
      before any box is warped (``on_untrusted_homography: fail``) or is used with a WARNING
      recorded in the report's ``fallbacks`` (``warn``).
    - ``device``: ``cuda`` warps with kornia on the GPU (``registration.warp.warp_boxes_torch``),
      ``cpu`` with numpy; ``auto`` takes the GPU when this machine has one that torch can use
      (``torch.cuda.is_available()``; torch is imported to ask), else numpy. The choice depends on
      this parameter and the machine only, never on what else the process happened to import.
      Same numbers either way (float64, ~1e-9 px).
    """

    registry_dir: Path | None = None
    min_size: float = Field(default=2.0, ge=0)
    min_visible_fraction: float = Field(default=0.5, ge=0, le=1)
    max_homography_error_px: float = Field(default=3.0, gt=0)
    on_untrusted_homography: Literal["fail", "warn"] = "fail"
    device: Literal["auto", "cpu", "cuda"] = "auto"


def _size(v: Any) -> tuple[int, int]:
    return int(v[0]), int(v[1])


def _resolved(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return str(path)


def _median_box_px(ds: dict, H: Any) -> float | None:
    """Median RGB box size sqrt(w*h) of ``ds`` times the homography's mean linear scale: thermal px."""
    if not ds["annotations"]:
        return None
    wh = np.array([a["bbox"][2:4] for a in ds["annotations"]], dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(np.asarray(H, dtype=np.float64)[:2, :2]))))
    return float(np.median(np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None)))) * scale


def _box_warper(device: str) -> tuple[Callable[..., Any], str]:
    """(warp function, device used) for ``WarpParams.device``: kornia on the GPU for ``cuda``, and for
    ``auto`` when ``torch.cuda.is_available()`` on this machine; numpy otherwise (``cpu`` never
    imports torch)."""
    from registration.warp import warp_boxes, warp_boxes_torch

    if device == "cpu":
        return warp_boxes, "cpu"
    if device == "auto":
        import torch

        if not torch.cuda.is_available():
            return warp_boxes, "cpu"
    return functools.partial(warp_boxes_torch, device="cuda"), "cuda"


def run_warp(inp: Path, out: Path, params: WarpParams, *, index: Path | None = None) -> StageReport:
    """Warp the RGB pseudo-labels of COCO file ``inp`` onto the thermal images; write COCO ``out``.

    ``index`` (required): the paired index, which gives each image's pair (matched by the
    image's ``pair_id``, else by its RGB file path; never by bare image id, which another COCO
    file may number differently). Output images are the thermal images
    (same ids, thermal ``file_name``/``width``/``height``, ``pair_id``/``version``/``split``/
    ``daynight`` carried), categories as in the input. No per-image cache: warping is cheaper
    than reading one (> 1M boxes/s).
    """
    from data.index import load_index
    warp_boxes, warp_device = _box_warper(params.device)
    log.info("warp: boxes warped on %s (%s)", warp_device, "kornia" if warp_device == "cuda" else "numpy")

    t0 = time.perf_counter()
    inp, out = Path(inp), Path(out)
    if index is None:
        raise InputError("the warp stage needs the paired index (thermal files, sizes and versions)", "warp",
                         "pass --index INDEX_JSON (written by 'rgb2thermal data ...')")
    ds = load_dataset(inp)
    report = StageReport(stage="warp", inputs={"coco": str(inp), "index": str(index),
                                               "registry": str(params.registry_dir or "(package default)")},
                         params=params.to_dict())
    homographies = _Homographies(params, ds, report)
    images, jobs, n_other_ids = _thermal_images(ds, _PairFinder(load_index(index)), homographies, report)
    kept_of = _warp_jobs(jobs, homographies.entries, warp_boxes, params, report)
    anns = _warped_annotations(jobs, kept_of)
    for s in report.skipped_images:
        log.warning("skipped %s: %s", s["image"], s["reason"])
    if n_other_ids:
        log.warning("%d images have ids that differ from their pair's image id in the index; the output keeps the "
                    "input's ids, so compare it with COCO files of the same id space", n_other_ids)

    # no paths (input, index, registry folder): this file's content keys the steps after it
    info = {"stage": "warp", "params": {k: v for k, v in params.to_dict().items() if k != "registry_dir"}}
    save_dataset(out, new_dataset(images, anns, ds["categories"], info), indent=None)
    report.counts = {"images_in": len(ds["images"]), "images_out": len(images), "boxes_in": len(ds["annotations"]),
                     "boxes_out": len(anns), "homographies": len(homographies.entries),
                     "image_ids_not_index_ids": n_other_ids}
    report.outputs = {"coco": str(out), "report": str(report_path(out))}
    report.seconds = round(time.perf_counter() - t0, 3)
    report.save(report_path(out))
    return report


class _PairFinder:
    """An image's pair in the index: by ``pair_id``, else by its resolved RGB file path."""

    def __init__(self, pidx: Any) -> None:
        self.pidx = pidx
        self.by_id = pidx.by_pair_id()
        self.by_rgb: dict[str, Any] = {}          # built on first need: resolving 10k paths costs ~1 s

    def __call__(self, im: dict) -> Any:
        if im.get("pair_id") is not None:
            return self.by_id.get(im["pair_id"])
        if not self.by_rgb:
            self.by_rgb.update({_resolved(p.rgb_path): p for p in self.pidx.pairs})
        return self.by_rgb.get(_resolved(im["file_name"]))


class _Homographies:
    """Registry entries by ``(version, RGB size)``, each looked up and judged once; an untrusted one
    stops the stage or is used with a recorded fallback (``on_untrusted_homography``)."""

    def __init__(self, params: WarpParams, ds: dict, report: StageReport) -> None:
        self.params, self.ds, self.report = params, ds, report
        self.entries: dict[tuple[str, tuple[int, int]], Any] = {}

    def get(self, version: str, rgb_size: tuple[int, int], thermal_size: tuple[int, int]) -> Any:
        """The entry for ``version`` at ``rgb_size`` (width, height px), which must map to ``thermal_size``."""
        from registration.registry import lookup

        key = (version, rgb_size)
        if key not in self.entries:
            e = lookup(self.params.registry_dir, version, rgb_size)
            if _size(e.thermal_size) != thermal_size:
                raise InputError(f"the homography for version '{version}' at RGB {rgb_size[0]}x{rgb_size[1]} maps to a "
                                 f"{e.thermal_size[0]}x{e.thermal_size[1]} thermal image, but the index's thermal images are "
                                 f"{thermal_size[0]}x{thermal_size[1]}", str(self.params.registry_dir),
                                 "re-estimate the homography for this thermal resolution (rgb2thermal register estimate)")
            self._judge(e, version, rgb_size)
            self.entries[key] = e
            self.report.models[f"homography:{version}:{rgb_size[0]}x{rgb_size[1]}"] = (
                f"{getattr(e, 'method', '?')}, error {getattr(e, 'error_px', None)} px")
        return self.entries[key]

    def _judge(self, e: Any, version: str, rgb_size: tuple[int, int]) -> None:
        """Refuse an untrusted entry (``fail``), or log and record it as a fallback (``warn``)."""
        from registration.registry import assess_entry, registry_path, threshold_note

        params = self.params
        v = assess_entry(e, params.max_homography_error_px)
        if v.status == "ok":
            return
        note = threshold_note(params.max_homography_error_px, _median_box_px(self.ds, e.H))
        msg = (f"homography for version '{version}' at RGB {rgb_size[0]}x{rgb_size[1]} "
               f"({e.method}) is {v.status}: {'; '.join(v.reasons)} (threshold {note})")
        if v.refused and params.on_untrusted_homography == "fail":
            raise InputError(msg, str(registry_path(params.registry_dir, version)),
                             f"click points: rgb2thermal register estimate --version {version} --rgb-size "
                             f"{rgb_size[0]} {rgb_size[1]} --points POINTS.csv (or, knowingly, set "
                             "warp.on_untrusted_homography: warn or raise warp.max_homography_error_px)")
        log.warning("%s; used anyway", msg)
        self.report.fallbacks.append(f"{msg}; used anyway")


#: One image's warp job: (image id, its RGB boxes, homography key, the ``warp`` provenance of its boxes).
_Job = tuple[int, list[dict], tuple[str, tuple[int, int]], dict]


def _thermal_images(ds: dict, pair_of: _PairFinder, homographies: _Homographies,
                    report: StageReport) -> tuple[list[dict], list[_Job], int]:
    """(output thermal images, warp jobs, how many images' ids differ from their pair's index id);
    an image without a pair or whose size differs from the index's RGB size is skipped with its boxes."""
    from tqdm import tqdm

    by_image: dict[int, list[dict]] = {im["id"]: [] for im in ds["images"]}
    for a in ds["annotations"]:
        by_image[a["image_id"]].append(a)
    images: list[dict] = []
    n_other_ids = 0
    jobs: list[_Job] = []
    for im in tqdm(ds["images"], desc="warp", unit="img", disable=None):
        pair = pair_of(im)
        items = by_image.pop(im["id"])
        if pair is None:
            report.skip_image(im["file_name"], f"image id {im['id']} (pair_id {im.get('pair_id')!r}) is not a pair of the index")
            report.add_dropped("image_not_in_index", len(items))
            continue
        rgb_size, th_size = _size(pair.rgb_size), _size(pair.thermal_size)
        if (im["width"], im["height"]) != rgb_size:
            report.skip_image(im["file_name"], f"COCO says {im['width']}x{im['height']} but the index's RGB image is "
                                               f"{rgb_size[0]}x{rgb_size[1]}")
            report.add_dropped("image_size_mismatch", len(items))
            continue
        e = homographies.get(pair.version, rgb_size, th_size)
        if pair.image_id and pair.image_id != im["id"]:
            n_other_ids += 1
        images.append({"id": im["id"], "file_name": str(pair.thermal_path), "width": th_size[0], "height": th_size[1],
                       "pair_id": pair.pair_id, "version": pair.version, "original_id": pair.original_id,
                       "split": pair.split, "daynight": pair.daynight, "modality": "thermal",
                       "rgb_file_name": im["file_name"]})
        if items:
            jobs.append((im["id"], items, (pair.version, rgb_size), {
                "version": pair.version, "rgb_size": list(rgb_size), "method": getattr(e, "method", None),
                "error_px": getattr(e, "error_px", None)}))
    return images, jobs, n_other_ids


def _warp_jobs(jobs: list[_Job], entries: dict[tuple[str, tuple[int, int]], Any], warp_boxes: Callable[..., Any],
               params: WarpParams, report: StageReport) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Image id -> (indices of its kept boxes, their warped xyxy thermal px boxes, visible fractions);
    drops are counted in the report by reason."""
    # one warp per homography over all its images' boxes (per image, the numpy calls cost more than the
    # arithmetic); the rule is per box, so the result is the same as image by image
    kept_of: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for key in dict.fromkeys(k for _, _, k, _ in jobs):
        group = [j for j in jobs if j[2] == key]
        e = entries[key]
        res = warp_boxes(xywh_to_xyxy([a["bbox"] for _, items, _, _ in group for a in items]),
                         np.asarray(e.H, dtype=np.float64), _size(e.thermal_size),
                         min_size=params.min_size, min_visible_fraction=params.min_visible_fraction)
        for reason, n in res.dropped.items():
            report.add_dropped(reason, n)
        bounds = np.cumsum([0] + [len(items) for _, items, _, _ in group])
        for g, (image_id, _, _, _) in enumerate(group):
            sel = (res.keep >= bounds[g]) & (res.keep < bounds[g + 1])
            keep = res.keep[sel]
            kept_of[image_id] = (keep - bounds[g], res.boxes[sel], res.visible_fraction[keep])
    return kept_of


def _warped_annotations(jobs: list[_Job], kept_of: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[dict]:
    """The kept boxes as COCO annotations (xywh thermal px), numbered from 1, each with its provenance
    (the input's other keys, ``rgb_bbox`` in COCO xywh RGB px, ``warp``)."""
    image_ids, cats, boxes, extras = [], [], [], []
    for image_id, items, _, warp_info in jobs:
        keep, kept_boxes, vis = kept_of[image_id]
        kept = [items[j] for j in keep.tolist()]
        image_ids += [image_id] * len(kept)
        cats += [a["category_id"] for a in kept]
        boxes.append(kept_boxes)
        extras += [{**{k: v for k, v in a.items() if k not in _REBUILT}, "rgb_bbox": a["bbox"],
                    "warp": {**warp_info, "visible_fraction": v}} for a, v in zip(kept, np.round(vis, 4).tolist())]
    return annotations(1, image_ids, cats, np.concatenate(boxes) if boxes else np.zeros((0, 4)), extras)


#: How the pipeline runs this stage (:class:`core.stage_spec.StageSpec`): ``registry_dir`` unset is the
#: registry the step reads (the default registry, or the synthetic data's own).
STAGE_SPEC = StageSpec(kind="warp", run=run_warp, params=WarpParams, output="warped.json", inputs="labels",
                       uses=("index",), section="warp", filled={"registry_dir": "registry"})
