"""What ignore regions would hold: the boxes a student scores below its class threshold, against the thermal labels.

Why: after three rounds without RGB labels the fused person labels still miss about a third of the adapt
frames' people, and a missed person is taught as background. ``fuse.ignore_from`` would keep a student's
boxes scoring in ``[ignore_from, threshold)`` as ignore regions, which training erases (YOLOX has no ignore
loss), so that they are taught neither as objects nor as background. That only pays if those boxes are
mostly the missed objects. This measures it before any training is spent on it, on the adapt frames'
thermal labels (never test): for student 1's labels of a finished run (``infer@round2``, the first set an
ignore band in rounds 2-3 would come from), per class, the boxes in the band that no fused label of that
round covers (IoU < 0.5: those would become ignore regions), how many of them are real objects (IoU >= 0.5
with a thermal label), and how many of the objects the fused labels miss they reach.

Boxes are COCO ``xywh`` in pixels, compared as ``xyxy``. The band's floor is ``--floors`` (0.05: the infer
stage's ``min_score``, nothing below it is kept), its top each class's threshold of the students' labels.

Run: ``python -m benchmarks.ignore_band [--candidate rgbpredttaprev] [--seeds 0 1 2]`` on the candidate's
finished workspaces (``benchmarks.msrs_adaptation --root``); the table goes to
``benchmarks/results/ignore_band.md``.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from core import atomic
from core.boxes import iou_matrix, xywh_to_xyxy

from benchmarks.label_decisions import recipe_params
from benchmarks.msrs_adaptation import CANDIDATES, REPO

RESULT = REPO / "benchmarks" / "results" / "ignore_band.md"
Boxes = dict[tuple[int, str], list[tuple[list[float], float]]]


def by_image_class(ds: dict) -> Boxes:
    """(image id, class name) -> [(xywh box, score)], ignore regions (``iscrowd``) left out."""
    names = {c["id"]: c["name"] for c in ds["categories"]}
    out: Boxes = defaultdict(list)
    for a in ds["annotations"]:
        if not a.get("iscrowd"):
            out[(a["image_id"], names[a["category_id"]])].append((a["bbox"], float(a.get("score", 1.0))))
    return out


def _covered(boxes: list, others: list) -> np.ndarray:
    """Per box of ``boxes``: does a box of ``others`` overlap it at IoU >= 0.5?"""
    if not boxes or not others:
        return np.zeros(len(boxes), dtype=bool)
    return iou_matrix(xywh_to_xyxy(boxes), xywh_to_xyxy(others)).max(axis=1) >= 0.5


def band_counts(gt: Boxes, student: Boxes, fused: Boxes, cls: str, low: float, high: float) -> dict[str, int]:
    """For one class: ``band`` (the student's boxes in ``[low, high)`` no fused label covers), ``true``
    (those matching a thermal label), ``missed`` (thermal labels no fused label covers) and ``reached``
    (those a band box covers)."""
    out = dict.fromkeys(("band", "true", "missed", "reached"), 0)
    for key in {k for k in (*gt, *student) if k[1] == cls}:
        labels = [b for b, _ in fused.get(key, [])]
        scored = [b for b, s in student.get(key, []) if low <= s < high]
        band = [b for b, inside in zip(scored, _covered(scored, labels), strict=True) if not inside]
        truth = [b for b, _ in gt.get(key, [])]
        missed = [b for b, inside in zip(truth, _covered(truth, labels), strict=True) if not inside]
        out["band"] += len(band)
        out["true"] += int(_covered(band, truth).sum())
        out["missed"] += len(missed)
        out["reached"] += int(_covered(missed, band).sum())
    return out


def run_seed(ws: Path, seed: int, candidate: str, floors: list[float]) -> list[str]:
    """The table rows of one seed's workspace: one per band floor and class."""
    params = recipe_params(seed, 2, candidate)
    pseudo = params.self_training.round_pseudo(params.thermal_source.pseudo)
    st = ws / "stages"
    gt, student, fused = (by_image_class(atomic.read_json(st / p)) for p in
                          ("index/thermal_adapt.json", "infer@round2/infer.json", "fuse@round2/fused.json"))
    rows = []
    for cls, low in ((c, f) for f in floors for c in params.data.classes):
        high = float(pseudo["thresholds"][cls])
        c = band_counts(gt, student, fused, cls, low, high)
        rows.append(f"| {seed} | {cls} | [{low:g}, {high:g}) | {c['band']} | {c['true']} ({c['true'] / max(c['band'], 1):.0%}) "
                    f"| {c['missed']} | {c['reached']} ({c['reached'] / max(c['missed'], 1):.0%}) |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ignore_band", description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidate", choices=sorted(CANDIDATES), default="rgbpredttaprev",
                    help="whose finished workspaces to read (student 1 is rgbpredtta's in rgbpredtta*)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", type=Path, default=Path("/tmp/rgb2thermal-msrs-adaptation"))
    ap.add_argument("--floors", type=float, nargs="+", default=[0.05, 0.1],
                    help="the bands' floors (ignore_from); 0.05 is the infer stage's min_score, nothing is kept below it")
    args = ap.parse_args(argv)
    lines = [f"## Student 1's boxes below its thresholds (`{args.candidate}`, adapt frames; benchmarks/ignore_band.py)", "",
             "| seed | class | score band | band boxes no fused label covers | of them real objects | objects the fused "
             "labels miss | of them a band box reaches |", "|---:|---|---|---:|---:|---:|---:|"]
    for seed in args.seeds:
        lines += run_seed(args.root / f"cand_{args.candidate}_seed{seed}", seed, args.candidate, args.floors)
    print(atomic.write_text(RESULT, "\n".join(lines) + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
