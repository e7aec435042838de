"""Stage ``pseudo``: detector output -> target-class pseudo-labels.

Why: a teacher's raw detections are in the detector's class space (80 COCO classes, say) with
every score down to ``min_score``; training labels must be in the *target* classes (default
``person``, ``car``), confident, de-duplicated and not absurd. This stage applies, per image
and in this order (each drop counted under its reason in the report):

1. class map, detector class name -> target class (``unmapped_class``);
2. per-target-class score threshold (``below_threshold``) — users compare e.g. 0.5 vs 0.7;
3. minimum box size: width or height below ``min_size`` pixels (``too_small``);
4. class-wise NMS among the boxes of one target class (``nms``) — after mapping, so a
   ``car`` and a ``truck`` box on the same vehicle become one ``car``;
5. at most ``max_per_image`` boxes, highest scores first (``max_per_image``).

Thresholds live here, not in ``infer``, so changing them never re-runs inference. A score
histogram per target class (scores of the mapped boxes, threshold marked) is written as PNG
beside the output so a user can see where the threshold cuts.

Boxes: ``xyxy`` float pixels internally, COCO ``xywh`` in files. Input annotations without a
``score`` (e.g. ground truth standing in for a perfect teacher) count as score 1.0.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field, field_validator, model_validator

from core import atomic
from core.boxes import xywh_to_xyxy
from core.coco import annotations, categories_from_names, load_dataset, new_dataset, save_dataset
from core.errors import InputError
from core.stage_params import StageParams
from core.stage_report import StageReport, report_path
from core.stage_spec import StageSpec
from data.index import DEFAULT_CLASSES

log = logging.getLogger(__name__)

#: Extra class-map entries for ``vehicles_as_car`` (COCO detector class names).
VEHICLES_AS_CAR: dict[str, str] = {"truck": "car", "bus": "car"}
#: Histogram bins over the score range [0, 1].
HIST_BINS = np.linspace(0.0, 1.0, 51)
DROP_REASONS = ("unmapped_class", "below_threshold", "too_small", "nms", "max_per_image")
#: A detector score threshold.
Score = Annotated[float, Field(ge=0, le=1)]


class PseudoParams(StageParams):
    """Pseudo-labelling rules.

    - ``target_classes``: output categories, ids 1-based in this order.
    - ``class_map``: detector class name -> target class name. None = each target class maps
      from the detector class of the same name (COCO ``person`` -> ``person``, ``car`` -> ``car``).
    - ``vehicles_as_car``: also map ``truck`` and ``bus`` to ``car``.
    - ``thresholds``: score threshold per target class; others use ``score_threshold``.
      A box is kept when ``score >= threshold``.
    - ``score_threshold``: the default per-class score threshold, in [0, 1].
    - ``nms_iou``: class-wise NMS IoU threshold in (0, 1]; 1.0 disables NMS.
    - ``min_size``: minimum box width and height in pixels.
    - ``max_per_image``: cap on boxes per image (highest scores kept).
    - ``histogram``: write the per-class score histogram PNGs.
    """

    target_classes: tuple[str, ...] = DEFAULT_CLASSES
    class_map: dict[str, str] | None = None
    vehicles_as_car: bool = False
    thresholds: dict[str, Score] = Field(default_factory=dict)
    score_threshold: Score = 0.5
    nms_iou: float = Field(default=0.5, gt=0, le=1)
    min_size: float = Field(default=4.0, ge=0)
    max_per_image: int = Field(default=100, ge=1)
    histogram: bool = True

    @field_validator("target_classes")
    @classmethod
    def _unique_classes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"target classes must be a non-empty list of unique names, got {list(v)} "
                             "(e.g. person car)")
        return v

    @model_validator(mode="after")
    def _target_class_names(self) -> PseudoParams:
        """Thresholds and class-map destinations name TARGET classes (after the class map)."""
        for name in self.thresholds:
            if name not in self.target_classes:
                raise ValueError(f"threshold given for '{name}', which is not a target class "
                                 f"{list(self.target_classes)} (thresholds are per TARGET class, after the class map)")
        for src, dst in self.resolved_class_map().items():
            if dst not in self.target_classes:
                raise ValueError(f"class map sends '{src}' to '{dst}', which is not a target class "
                                 f"{list(self.target_classes)} (map detector classes onto the target classes only)")
        return self

    def resolved_class_map(self) -> dict[str, str]:
        """Detector class name -> target class name, with the defaults applied."""
        cmap = dict(self.class_map) if self.class_map is not None else {c: c for c in self.target_classes}
        if self.vehicles_as_car:
            cmap.update({k: v for k, v in VEHICLES_AS_CAR.items() if k not in cmap})
        return cmap

    def threshold(self, target_class: str) -> float:
        return float(self.thresholds.get(target_class, self.score_threshold))

    def to_dict(self) -> dict:
        """JSON form with the defaults resolved: the class map and every target class's threshold."""
        d = super().to_dict()
        d["class_map"] = self.resolved_class_map()
        d["thresholds"] = {c: self.threshold(c) for c in self.target_classes}
        return d


def _nms_order(boxes: np.ndarray, scores: np.ndarray, target_idx: np.ndarray, nms_iou: float) -> np.ndarray:
    """Class-wise NMS of one image's boxes; kept indices, best score first (ties in NMS order).

    ``boxes`` ``(N, 4)`` xyxy pixels, ``scores`` ``(N,)``, ``target_idx`` ``(N,)`` target class index.
    """
    idx = np.arange(len(boxes))
    if len(idx) > 1 and nms_iou < 1.0 and len(np.unique(target_idx)) < len(idx):   # two boxes of one class
        # mmcv's NMS, not torchvision's: mmdet has loaded mmcv.ops in the same process already
        # (the teacher's inference), while importing torchvision cost ~1 s of every re-run
        import torch
        from mmcv.ops import batched_nms

        _, keep = batched_nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32),
                              torch.as_tensor(target_idx, dtype=torch.int64),
                              {"type": "nms", "iou_threshold": float(nms_iou)})
        idx = keep.numpy()
    return idx[np.argsort(-scores[idx], kind="stable")]


def _passes(boxes: np.ndarray, scores: np.ndarray, target_idx: np.ndarray, thresholds: np.ndarray,
            min_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(score >= its class threshold, that and both sides >= ``min_size`` pixels), per box."""
    above = scores >= thresholds[target_idx]
    wh = boxes[:, 2:] - boxes[:, :2]
    return above, above & (wh >= min_size).all(axis=1)


def _save_histogram(path: Path, cls: str, counts: np.ndarray, threshold: float) -> None:
    """Bar chart of the mapped boxes' scores for one class, kept region shaded (Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    centres = (HIST_BINS[:-1] + HIST_BINS[1:]) / 2
    width = HIST_BINS[1] - HIST_BINS[0]
    kept = centres >= threshold
    ax.bar(centres[~kept], counts[~kept], width=width, color="#bbbbbb", label="dropped (below threshold)")
    ax.bar(centres[kept], counts[kept], width=width, color="#2a7ab0", label="kept by threshold")
    ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("detector score")
    ax.set_ylabel("boxes")
    n_above = int(counts[kept].sum())
    ax.set_title(f"{cls}: {int(counts.sum())} mapped boxes, ~{n_above} at/above threshold")
    ax.legend(fontsize=7, loc="upper center")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp)


def histogram_path(out: Path, cls: str) -> Path:
    """``<out stem>.score_hist.<class>.png`` beside the COCO output."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cls)
    return out.with_name(f"{out.stem}.score_hist.{safe}.png")


def run_pseudo(inp: Path, out: Path, params: PseudoParams) -> StageReport:
    """Turn the detections in COCO file ``inp`` (output of ``infer``) into pseudo-labels at ``out``.

    Output: same images; categories = ``params.target_classes``; annotations sorted by score
    within each image, each keeping ``score``, ``source``, ``detector_class`` and
    ``infer_ann_id`` (the input annotation's id). No per-image cache: this stage is cheaper than
    reading one.
    """
    t0 = time.perf_counter()
    inp, out = Path(inp), Path(out)
    ds = load_dataset(inp)
    report = StageReport(stage="pseudo", inputs={"coco": str(inp)}, params=params.to_dict())
    det_names = {c["id"]: c["name"] for c in ds["categories"]}
    thresholds = np.asarray([params.threshold(c) for c in params.target_classes], dtype=np.float64)

    # steps 1-3 over all boxes at once (a 10k-image infer file holds ~500k detections: per-image
    # Python over them was most of this stage), then NMS and the cap per image on what is left
    m = _Mapped.of(ds["annotations"], _target_of_category(det_names, params, report, inp))
    dropped = dict.fromkeys(DROP_REASONS, 0)
    dropped["unmapped_class"] = len(m.src) - len(m.index)
    above, ok = _passes(m.boxes, m.scores, m.target, thresholds, params.min_size)
    dropped["below_threshold"] = int((~above).sum())
    dropped["too_small"] = int((above & ~ok).sum())
    keep, extras, kept_per_class = _nms_and_cap(m, _image_groups(ds, m, np.flatnonzero(ok)), params, det_names, dropped)
    anns = annotations(1, [m.src[i]["image_id"] for i in m.index[keep].tolist()], (m.target[keep] + 1).tolist(),
                       m.boxes[keep], extras)
    hist = np.stack([np.histogram(np.clip(m.scores[m.target == t], 0.0, 1.0), bins=HIST_BINS)[0]     # mapped boxes' scores
                     for t in range(len(params.target_classes))]).astype(np.int64)
    # no input path and no copy of the input's info: this file's content keys the steps after it,
    # which must not depend on where the workspace is (the report beside it names the input)
    info = {"stage": "pseudo", "params": params.to_dict(),
            "detector": {k: v for k, v in (ds.get("info") or {}).items() if k in ("detector", "model_fingerprint")}}
    save_dataset(out, new_dataset(ds["images"], anns, categories_from_names(params.target_classes), info), indent=None)

    report.outputs = {"coco": str(out), "report": str(report_path(out))}
    if params.histogram:
        for t, cls in enumerate(params.target_classes):
            path = histogram_path(out, cls)
            _save_histogram(path, cls, hist[t], float(thresholds[t]))
            report.outputs[f"score_hist_{cls}"] = str(path)
    report.dropped = {k: v for k, v in dropped.items() if v}
    report.counts = {"images": len(ds["images"]), "boxes_in": len(ds["annotations"]), "boxes_out": len(anns),
                     **{f"kept_{c}": int(kept_per_class[t]) for t, c in enumerate(params.target_classes)},
                     **{f"mapped_{c}": int(hist[t].sum()) for t, c in enumerate(params.target_classes)}}
    report.seconds = round(time.perf_counter() - t0, 3)
    report.save(report_path(out))
    return report


def _target_of_category(det_names: dict[int, str], params: PseudoParams, report: StageReport,
                        inp: Path) -> dict[int, int]:
    """Detector category id -> target class index, for the categories the class map covers; map
    entries that match no input class are logged and listed in the report (``class_map_unused``)."""
    cmap = params.resolved_class_map()
    used = [k for k in cmap if k in det_names.values()]
    if not used:
        raise InputError(f"no class-map entry matches the input's classes (map: {sorted(cmap)}; input classes: "
                         f"{sorted(det_names.values())[:20]}{' ...' if len(det_names) > 20 else ''})", str(inp),
                         "give --map DETECTOR_CLASS=TARGET_CLASS for the detector's class names")
    unused = sorted(set(cmap) - set(used))
    if unused:
        log.warning("class-map entries %s match no class of %s; they map nothing", unused, inp)
        report.params["class_map_unused"] = unused
    tidx = {c: i for i, c in enumerate(params.target_classes)}
    return {cid: tidx[cmap[name]] for cid, name in det_names.items() if name in cmap}


@dataclass
class _Mapped:
    """The input boxes whose category maps to a target class, as arrays (positions ``index`` in ``src``,
    target class index, ``xyxy`` pixel boxes, scores: 1.0 where the input has none)."""

    src: list[dict]
    index: np.ndarray
    target: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    @classmethod
    def of(cls, src: list[dict], cat_to_target: dict[int, int]) -> _Mapped:
        target_all = np.fromiter((cat_to_target.get(a["category_id"], -1) for a in src), dtype=np.int64, count=len(src))
        mapped_i = np.flatnonzero(target_all >= 0)
        boxes = xywh_to_xyxy([src[i]["bbox"] for i in mapped_i.tolist()])
        scores = np.asarray([float(src[i].get("score", 1.0)) for i in mapped_i.tolist()], dtype=np.float64)
        return cls(src, mapped_i, target_all[mapped_i], boxes, scores)


def _image_groups(ds: dict, m: _Mapped, surv: np.ndarray) -> list[np.ndarray]:
    """The surviving mapped boxes ``surv`` split per image: image order, annotation order within an image."""
    pos = {im["id"]: k for k, im in enumerate(ds["images"])}
    img_pos = np.fromiter((pos[m.src[i]["image_id"]] for i in m.index[surv].tolist()), dtype=np.int64, count=len(surv))
    by_pos = np.argsort(img_pos, kind="stable")
    surv, img_pos = surv[by_pos], img_pos[by_pos]
    return np.split(surv, np.flatnonzero(img_pos[1:] != img_pos[:-1]) + 1) if len(surv) else []


def _nms_and_cap(m: _Mapped, groups: list[np.ndarray], params: PseudoParams, det_names: dict[int, str],
                 dropped: dict[str, int]) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Steps 4-5 per image: (kept mapped boxes, best score first per image; their provenance;
    kept count per target class); drops counted in ``dropped``."""
    from tqdm import tqdm

    kept_per_class = np.zeros(len(params.target_classes), dtype=np.int64)
    kept_all: list[np.ndarray] = []
    extras: list[dict] = []
    for group in tqdm(groups, desc="pseudo", unit="img", disable=None):
        order = _nms_order(m.boxes[group], m.scores[group], m.target[group], params.nms_iou)
        dropped["nms"] += len(group) - len(order)
        dropped["max_per_image"] += max(0, len(order) - params.max_per_image)
        keep = group[order[: params.max_per_image]]
        kept_per_class += np.bincount(m.target[keep], minlength=len(params.target_classes))
        kept_all.append(keep)
        extras += [{"score": round(float(m.scores[j]), 6), "source": a.get("source", "unknown"),
                    "detector_class": det_names[a["category_id"]], "infer_ann_id": a["id"]}
                   for j, a in zip(keep.tolist(), (m.src[i] for i in m.index[keep].tolist()))]
    keep = np.concatenate(kept_all) if kept_all else np.zeros(0, np.int64)
    return keep, extras, kept_per_class


#: How the pipeline runs this stage (:class:`core.stage_spec.StageSpec`): target classes = ``data.classes``.
STAGE_SPEC = StageSpec(kind="pseudo", run=run_pseudo, params=PseudoParams, output="pseudo.json",
                       inputs="predictions", section="pseudo", wired={"target_classes": "classes"})
