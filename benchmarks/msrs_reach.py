"""How many thermal objects can RGB labels reach at all? (msrs-aligned-20, perfect RGB teacher)

Why: even a perfect RGB detector cannot label what the RGB camera does not see — at night the
thermal camera shows people the RGB image hides. This measures that ceiling on real data: the
RGB **ground-truth** boxes stand in for a perfect teacher's pseudo-labels, are warped to the
thermal frame through the identity homography (msrs-aligned-20 is pixel-aligned; the warp is
``registration.warp.warp_boxes`` with ``H = I``, i.e. clip + drop-mostly-outside only), and the
report stage scores them against the separately annotated thermal ground truth, per class and
day/night. A third row refines the warped boxes with the classical refiner (no SAM2 checkpoint
is available here) to show whether refinement helps localisation on real thermal frames.

Run: ``python -m benchmarks.msrs_reach [--data ../shared/data/msrs-aligned-20]``; writes
``benchmarks/results/msrs_reach.md``. The full report (with overlays of the third-party images)
goes to a temporary folder, never into the repository.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from core import atomic, coco
from core.boxes import cxcywh_norm_to_xyxy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "msrs-aligned-20"
RESULT = REPO / "benchmarks" / "results" / "msrs_reach.md"


def _classes(root: Path) -> list[str]:
    names = []
    for line in (root / "classes.txt").read_text().splitlines():
        parts = line.split()
        if parts:
            names.append(parts[-1])
    return names


def msrs_coco(root: Path) -> tuple[dict, dict]:
    """(RGB GT, thermal GT) COCO datasets of an msrs-style folder: YOLO labels, ``*N``/``*D`` stems.

    Image ids are shared by the pair; ``file_name`` is absolute; ``daynight`` from the stem suffix.
    """
    import cv2

    names = _classes(root)
    cats = coco.categories_from_names(names)
    out = []
    for modality in ("rgb", "thermal"):
        images, anns = [], []
        for i, img_path in enumerate(sorted((root / modality).glob("*.png"))):
            img = cv2.imread(str(img_path), cv2.IMREAD_UNCHANGED)
            h, w = img.shape[:2]
            stem = img_path.stem
            dn = {"N": "night", "D": "day"}.get(stem[-1:].upper(), "unknown")
            images.append({"id": i + 1, "file_name": str(img_path.resolve()), "width": w, "height": h,
                           "daynight": dn, "pair_id": f"msrs20:{stem}"})
            label = root / f"labels_{modality}" / f"{stem}.txt"
            rows = [r.split() for r in label.read_text().splitlines() if r.strip()] if label.is_file() else []
            if rows:
                arr = np.array([[float(v) for v in r[1:5]] for r in rows])
                boxes = cxcywh_norm_to_xyxy(arr, w, h)
                for r, b in zip(rows, boxes):
                    anns.append(coco.annotation(len(anns) + 1, i + 1, int(r[0]) + 1, b))
        out.append(coco.new_dataset(images, anns, cats, {"description": f"msrs-aligned-20 {modality} GT"}))
    return out[0], out[1]


def perfect_teacher_on_thermal(rgb_gt: dict, thermal_gt: dict) -> dict:
    """RGB GT boxes as pseudo-labels (score 1), warped with the identity homography onto the thermal images."""
    from registration.warp import warp_boxes

    sizes = {im["id"]: (im["width"], im["height"]) for im in thermal_gt["images"]}
    by_img = coco.boxes_by_image(rgb_gt)
    anns = []
    for iid, ib in by_img.items():
        if not len(ib.boxes):
            continue
        res = warp_boxes(ib.boxes, np.eye(3), sizes[iid], min_size=2.0, min_visible_fraction=0.5)
        for k, box in zip(res.keep, res.boxes):
            anns.append(coco.annotation(len(anns) + 1, iid, int(ib.category_ids[k]), box, score=1.0,
                                        source="rgb_ground_truth"))
    return coco.new_dataset(thermal_gt["images"], anns, rgb_gt["categories"],
                            {"description": "RGB GT as a perfect teacher, identity-warped to thermal"})


def run(data: Path, work: Path) -> dict:
    from tasks.refine import RefineParams, run_refine
    from tasks.report import ReportInputs, ReportParams, run_report

    rgb_gt, thermal_gt = msrs_coco(data)
    paths = {"rgb_gt": work / "rgb_gt.json", "thermal_gt": work / "thermal_gt.json",
             "pseudo": work / "pseudo.json", "warped": work / "warped.json", "refined": work / "refined.json"}
    coco.save_dataset(paths["rgb_gt"], rgb_gt)
    coco.save_dataset(paths["thermal_gt"], thermal_gt)
    pseudo = {**rgb_gt, "annotations": [{**a, "score": 1.0, "source": "rgb_ground_truth"} for a in rgb_gt["annotations"]]}
    coco.save_dataset(paths["pseudo"], pseudo)
    coco.save_dataset(paths["warped"], perfect_teacher_on_thermal(rgb_gt, thermal_gt))
    refine_rep = run_refine(paths["warped"], paths["refined"], RefineParams(method="classical"),
                            cache_dir=work / "cache")
    rep = run_report(ReportInputs(thermal_gt=paths["thermal_gt"], rgb_gt=paths["rgb_gt"], pseudo=paths["pseudo"],
                                  warped=paths["warped"], refined=paths["refined"]),
                     work / "report", ReportParams())
    return {"quality": atomic.read_json(work / "report" / "quality.json"), "refine": refine_rep.to_dict(),
            "report": rep.to_dict(), "gt": {"rgb": len(rgb_gt["annotations"]), "thermal": len(thermal_gt["annotations"])},
            "images": {dn: sum(im["daynight"] == dn for im in thermal_gt["images"]) for dn in ("day", "night")}}


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def to_markdown(res: dict) -> str:
    q = res["quality"]
    stages = q["stages"]
    groups = stages["warped"]["groups"]
    classes = [*stages["warped"]["classes"], "all"]
    lines = ["## Label reach on msrs-aligned-20 (RGB ground truth as a perfect teacher)", "",
             f"{res['images']['day']} day + {res['images']['night']} night real aligned pairs; "
             f"{res['gt']['rgb']} RGB GT boxes, {res['gt']['thermal']} thermal GT boxes. The RGB ground truth is used as "
             "the pseudo-labels of a perfect RGB detector, warped with the identity homography and scored against the "
             f"thermal ground truth (one-to-one matching, IoU ≥ {q['iou_threshold']}). `refined` = the classical Otsu "
             "refiner on the warped boxes (no SAM2 checkpoint available here). Produced by "
             "`python -m benchmarks.msrs_reach`.", "",
             "### Recall on thermal GT (TP / thermal GT boxes) — how many thermal objects RGB labels reach", "",
             "| class | stage | " + " | ".join(groups) + " |", "|---|---|" + "---:|" * len(groups)]
    for c in classes:
        for s in ("warped", "refined"):
            row = stages[s]["table"][c]
            lines.append(f"| {c} | {s} | " + " | ".join(
                f"{_f(row[g]['recall'])} ({row[g]['tp']}/{row[g]['gt']})" for g in groups) + " |")
    lines += ["", "### Precision and mean IoU of matched boxes (all classes)", "",
              "| stage | vs | " + " | ".join(f"{g} P" for g in groups) + " | " + " | ".join(f"{g} IoU" for g in groups)
              + " |", "|---|---|" + "---:|" * (2 * len(groups))]
    for s, vs in (("pseudo", "RGB GT"), ("warped", "thermal GT"), ("refined", "thermal GT")):
        row = stages[s]["table"]["all"]
        lines.append(f"| {s} | {vs} | " + " | ".join(_f(row[g]["precision"]) for g in groups) + " | "
                     + " | ".join(_f(row[g]["mean_iou"]) for g in groups) + " |")
    rc = res["refine"]["counts"]
    lines += ["", f"Refiner decisions: {rc['replace']} replaced, {rc['keep']} kept of {rc['boxes_in']} boxes "
              f"(score ≥ 0.3 Otsu separability and IoU to the input box ≥ 0.5 to replace).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="msrs-aligned-20 folder")
    ap.add_argument("--out", type=Path, default=RESULT, help="Markdown section to write")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="r2t-msrs-reach-") as tmp:
        res = run(args.data, Path(tmp))
    md = to_markdown(res)
    atomic.write_text(args.out, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
