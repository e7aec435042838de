"""Which thermal adapt frames a person should label first: the ones the pseudo-labels are least sure of.

Why: every decision the product makes (best checkpoint, number of rounds, sweep objective, nightly
promotion) wants a val split of labelled thermal frames, which users rarely have; and a person's
hour of labelling is worth most on the frames where the automatic labels are likely wrong. So each
thermal ADAPT frame (never test, never val, never a frame a person already labelled) gets an
uncertainty score, in BOXES (a person who labels a frame corrects every wrong box on it, so a frame
with five doubtful people is worth more than a frame with one doubtful car):

- ``disagreement``: how many boxes the label sources disagree on. For every pair of sources (the
  refined RGB labels warped to thermal, each round's thermal detector), ``(1 - agreement) * (n_a +
  n_b) / 2`` where agreement is the mean best same-class IoU of every box of either set with the other
  set (1 when both are empty, 0 when one is) and ``n_a``, ``n_b`` the two sets' box counts: one box
  that one source has and the other lacks counts 0.5, two boxes that do not overlap count 1; averaged
  over the pairs: RGB vs thermal, and round k vs round k' (between rounds).
- ``near_threshold``: how many of the frame's training labels have a score within ``band`` of the
  threshold that kept them (``|score - threshold| <= band``), ignore regions (uncertain boxes)
  counted as near: a small threshold change flips them.
- ``rare_class``: the rarest class present in the frame (any source), ``min_count / count(class)``
  over the pool, in [0, 1] (1 for the rarest class): rare classes get few pseudo-labels and little
  training.

The score is the weighted sum; the pick is greedy by score, balanced over day/night (the group with
the fewest picks so far goes next, the better candidate first) and ties are broken by a seeded
permutation of the pool, so a pick is deterministic for a seed. A pick for a val split
(``purpose: val``) leaves the scores out: the seeded permutation alone orders each day/night group,
a random draw that looks like the data (see :class:`PickFields`). Boxes are COCO ``xywh`` pixels in
the files and ``xyxy`` pixels inside.

Measured (msrs-bench adapt frames, round 1 without RGB labels, 20 frames, the frames' thermal labels
put in their place; ``benchmarks/RESULTS.md``): the same criteria as shares of the frame's boxes
picked frames with one or two doubtful cars (46 people, 46 cars on the 20 frames) and raised the
training labels' F1 by +0.040 person / +0.076 car, a random pick +0.048 / +0.050; as box counts
they pick 131 people and 22 cars and raise it by +0.080 / +0.052. What that buys the adapted model
was measured too (test mAP_50, 3 seeds): within the noise of a random pick of the same size, with and
without RGB labels, at round 1 (N = 10, 20, 40) and on the 3-round recipes (N = 20): better training
labels, not a better model (with RGB labels, cars 0.018 / 0.027 below random at N = 10 / 40).
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.boxes import iou_matrix, xywh_to_xyxy
from core.stage_params import StageParams

#: What a frame's score means; part of the ``pick`` step's key, so that a workspace picked under another
#: scoring picks again (``shares`` until 2026-12-06: the criteria were shares of the frame's boxes).
SCORING = "boxes"
#: (class name, image daynight or None) -> the score threshold that kept a training label, in [0, 1].
Threshold = Callable[[str, "str | None"], float]
CRITERIA = ("disagreement", "near_threshold", "rare_class")


class PickWeights(BaseModel):
    """Weight of each uncertainty criterion in a frame's score (0 switches one off): ``disagreement``
    and ``near_threshold`` per box, ``rare_class`` per frame."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    disagreement: float = Field(default=1.0, ge=0)
    near_threshold: float = Field(default=0.5, ge=0)
    rare_class: float = Field(default=0.5, ge=0)


class PickFields(BaseModel):
    """The pick's settings shared by the ``label`` section of ``params.yaml`` and :class:`PickParams`.

    - ``seed``: seeds the tie-break permutation (same seed, same pick).
    - ``band``: score distance to a class threshold that counts as "near" it, in [0, 1].
    - ``weights``: per criterion (see the module docstring).
    - ``balance_daynight``: alternate day and night frames (and frames of unknown time) when both exist.
    - ``purpose``: ``training`` (default): the most uncertain frames first, the frames worth correcting
      (``label import --as-training``); ``val``: a seeded random draw, balanced over day/night like the
      other, for a val split (``label import``'s default). Why two: a yardstick must look like the data
      the model meets, and the uncertain frames are the hardest ones: on msrs-bench the 20 most uncertain
      frames, used as val to choose among four rounds' students, chose round 1 on all 3 seeds (test mAP_50
      0.736 ± 0.007, all classes) where the val draw of 20 chose rounds 2-4 (0.764 ± 0.018)
      (``benchmarks/label_decisions.py``, RESULTS "Without RGB labels", section 4).
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    band: float = Field(default=0.1, ge=0, le=1)
    weights: PickWeights = Field(default_factory=PickWeights)
    balance_daynight: bool = True
    purpose: Literal["training", "val"] = "training"


class PickParams(PickFields, StageParams):
    """The pick's parameters: ``n`` frames to choose (>= 1) + :class:`PickFields`."""

    n: int = Field(default=20, ge=1)


@dataclass(frozen=True)
class Picked:
    """One chosen frame: its image id (shared by every COCO file of the run), score, criteria values
    (``reasons``: criterion -> value: boxes for ``disagreement`` and ``near_threshold``, [0, 1] for
    ``rare_class``), ``daynight`` and the thermal image's ``file_name``."""

    image_id: int
    score: float
    reasons: dict[str, float] = field(default_factory=dict)
    daynight: str | None = None
    file_name: str = ""


def _per_image(ds: Mapping) -> dict[int, list[tuple[str, np.ndarray, float, bool]]]:
    """``image id -> [(class name, xyxy box, score, uncertain)]`` of a COCO data set (boxes in pixels)."""
    names = {c["id"]: c["name"] for c in ds["categories"]}
    out: dict[int, list[tuple[str, np.ndarray, float, bool]]] = {}
    for a in ds["annotations"]:
        box = xywh_to_xyxy([a["bbox"]])[0]
        out.setdefault(a["image_id"], []).append((names[a["category_id"]], box, float(a.get("score", 1.0)),
                                                  bool(a.get("iscrowd")) or bool(a.get("uncertain"))))
    return out


def agreement(a: list[tuple[str, np.ndarray]], b: list[tuple[str, np.ndarray]]) -> float:
    """Symmetric box agreement of two label sets of one frame, in [0, 1].

    The mean, over every box of ``a`` and of ``b``, of its best IoU with a box of the same class in the
    other set: 1 for identical sets (and for two empty ones), 0 when one set is empty and the other not.

    Args:
        a: ``(class name, xyxy pixel box)`` per box of the first set.
        b: the same for the second set.

    Returns:
        The agreement in [0, 1].
    """
    if not a and not b:
        return 1.0
    total = 0.0
    for cls in {c for c, _ in a} | {c for c, _ in b}:
        ba = np.asarray([x for c, x in a if c == cls], dtype=np.float64).reshape(-1, 4)
        bb = np.asarray([x for c, x in b if c == cls], dtype=np.float64).reshape(-1, 4)
        if len(ba) and len(bb):
            m = iou_matrix(ba, bb)
            total += float(m.max(axis=1).sum() + m.max(axis=0).sum())
    return total / (len(a) + len(b))


def disagreeing_boxes(a: list[tuple[str, np.ndarray]], b: list[tuple[str, np.ndarray]]) -> float:
    """How many boxes two label sets of one frame disagree on: ``(1 - agreement) * (len(a) + len(b)) / 2``.

    A box one set has and the other lacks counts 0.5 (one of the two boxes of a would-be match),
    a pair of same-class boxes at IoU 0.5 counts 0.5, identical sets count 0.

    Args:
        a: ``(class name, xyxy pixel box)`` per box of the first set.
        b: the same for the second set.

    Returns:
        The count, >= 0 (at most ``(len(a) + len(b)) / 2``).

    Examples:
        >>> box = np.array([0.0, 0, 10, 10])
        >>> disagreeing_boxes([("person", box)] * 3, [])
        1.5
    """
    return (1.0 - agreement(a, b)) * (len(a) + len(b)) / 2


def frame_scores(labels: Mapping, sources: Mapping[str, Mapping], pool: list[dict], threshold: Threshold,
                 params: PickFields) -> dict[int, tuple[float, dict[str, float]]]:
    """The uncertainty score of every pool frame, in boxes (see the module docstring).

    Args:
        labels: COCO data set (``xywh`` pixels, ``score`` per box) of the training labels of the
            thermal frames (the last fused set, or the refined RGB labels without a thermal source).
        sources: name -> COCO data set of each label source on the same frames (same image ids).
        pool: the COCO images that may be picked (thermal adapt frames).
        threshold: the score threshold that kept a training label of a class on a day/night frame.
        params: weights and band.

    Returns:
        image id -> (score, criterion -> value: boxes, or [0, 1] for ``rare_class``).
    """
    lab = _per_image(labels)
    src = {k: _per_image(v) for k, v in sorted(sources.items())}
    day = {im["id"]: im.get("daynight") for im in pool}
    counts: Counter[str] = Counter(c for im in pool for s in (lab, *src.values()) for c, *_ in s.get(im["id"], []))
    least = min(counts.values()) if counts else 0
    w = params.weights
    out: dict[int, tuple[float, dict[str, float]]] = {}
    for im in pool:
        i = im["id"]
        sets = {k: [(c, b) for c, b, *_ in s.get(i, [])] for k, s in src.items()}
        pairs = list(itertools.combinations(sorted(sets), 2))
        dis = float(np.mean([disagreeing_boxes(sets[x], sets[y]) for x, y in pairs])) if pairs else 0.0
        own = lab.get(i, [])
        near = sum(1 for c, _, s, unsure in own if unsure or abs(s - threshold(c, day[i])) <= params.band + 1e-12)
        present = {c for s in (lab, *src.values()) for c, *_ in s.get(i, [])}
        reasons = {"disagreement": round(dis, 6), "near_threshold": float(near),
                   "rare_class": round(max((least / counts[c] for c in present), default=0.0), 6)}
        out[i] = (round(w.disagreement * reasons["disagreement"] + w.near_threshold * reasons["near_threshold"]
                        + w.rare_class * reasons["rare_class"], 9), reasons)
    return out


def pick_frames(labels: Mapping, sources: Mapping[str, Mapping], pool: list[dict], threshold: Threshold,
                params: PickParams) -> list[Picked]:
    """Choose the ``params.n`` most uncertain frames of ``pool`` (``purpose: val``: ``n`` frames at random,
    the scores kept for the export), balanced over day/night.

    Only frames of ``pool`` can be picked, whatever the label files hold: the caller passes the thermal
    adapt frames (the index's ``thermal_adapt_images``: no test frame, no val frame) minus the frames a
    person already labelled. Deterministic for ``params.seed``: the order of equal scores is a seeded
    permutation of the pool's image ids (sorted), never the input order.

    Args:
        labels: COCO training labels of the thermal frames (``xywh`` pixels, ``score`` per box).
        sources: name -> COCO labels of each source (``xywh`` pixels), same image ids.
        pool: COCO image dicts that may be picked (``id``, ``file_name``, ``daynight``).
        threshold: ``(class, daynight) -> score threshold`` of the training labels.
        params: ``n``, ``seed``, ``band``, ``weights``, ``balance_daynight``.

    Returns:
        The picked frames, best first (at most ``n``; all of the pool when it is smaller).
    """
    pool = sorted(pool, key=lambda im: im["id"])
    scores = frame_scores(labels, sources, pool, threshold, params)
    rank = {im["id"]: int(r) for im, r in zip(pool, np.random.default_rng(params.seed).permutation(len(pool)))}
    by_score = params.purpose == "training"

    def first(im: dict) -> tuple[float, int]:       # the better candidate sorts first
        return (-scores[im["id"]][0] if by_score else 0.0, rank[im["id"]])

    groups: dict[str, list[dict]] = {}
    for im in sorted(pool, key=first):
        groups.setdefault((im.get("daynight") or "unknown") if params.balance_daynight else "all", []).append(im)
    taken: dict[str, int] = dict.fromkeys(groups, 0)
    chosen: list[dict] = []
    while len(chosen) < params.n and any(taken[g] < len(groups[g]) for g in groups):
        open_groups = [g for g in groups if taken[g] < len(groups[g])]
        g = min(open_groups, key=lambda g: (taken[g], *first(groups[g][taken[g]])))
        chosen.append(groups[g][taken[g]])
        taken[g] += 1
    chosen.sort(key=first)
    return [Picked(im["id"], scores[im["id"]][0], scores[im["id"]][1], im.get("daynight"), str(im["file_name"]))
            for im in chosen]
