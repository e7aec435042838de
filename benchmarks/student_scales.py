"""Test sizes of the thermal labellers, scored by the label rule on the adapt frames (never test).

Why: a student trained at 416 px and run at 640 px still misses most people under 40 px tall
(msrs-bench adapt frames: 280 of the 619 thermal person boxes), and people are the class the
unlabelled-RGB recipe leaves furthest from the oracle. A second, larger test size
(``tta_sizes``, fused with the plain view by weighted box fusion) is the usual cure; whether it
helps the labels, and at which thresholds, is decided here on the adapt frames' thermal labels.

For each finished run of ``benchmarks.msrs_adaptation --candidate CAND`` (one per seed), each labeller
(the COCO teacher, student 1, student 2: the models that label the thermal frames of rounds 1-3) is run
over the 170 thermal adapt frames at each view (``tasks.infer.run_infer``, the product's one inference
path); its detections are cut at each threshold of the label rule's grid and fused with the run's RGB
side as the pipeline fuses them (``benchmarks.label_rule.fused_f1``), and the rule picks, per class,
the highest threshold within 0.01 of the best F1. Nothing is trained.

Run: ``python -m benchmarks.student_scales [--seeds 0 1] [--models student1 ...] [--views 640 640+960 ...]``;
the table goes to ``benchmarks/results/student_scales.md`` (``student_scales_<candidate>.md`` for a
``--candidate`` other than ``rgbpred``).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from core import atomic

from benchmarks.label_rule import GRID, choose, fused_f1
from benchmarks.msrs_adaptation import CANDIDATES, PARAMS, REPO, overrides

#: view name -> InferParams fields (test sizes [w, h] in pixels)
VIEWS: dict[str, dict[str, Any]] = {
    "640": {"input_size": (640, 640)}, "960": {"input_size": (960, 960)},
    "640+800": {"input_size": (640, 640), "tta_sizes": [(800, 800)]},
    "640+960": {"input_size": (640, 640), "tta_sizes": [(960, 960)]},
    "640+1280": {"input_size": (640, 640), "tta_sizes": [(1280, 1280)]},
    "640flip": {"input_size": (640, 640), "tta": ["flip"]},
    "640+960flip": {"input_size": (640, 640), "tta_sizes": [(960, 960)], "tta": ["flip"]},
}
#: labeller -> its files in a finished workspace (None: the run's teacher)
MODELS = {"teacher": None, "student1": "student", "student2": "student@round2"}
CLASSES = ["person", "car"]


def score_view(ws: Path, probe: Path, model: str, view: str, params) -> dict[float, dict[str, float]]:
    """Fused label F1 per class at every grid threshold, for one labeller at one view."""
    from tasks.infer import InferParams, run_infer

    step = probe / "stages" / f"{model}_{view}"
    if not (step / "infer.json").is_file():
        train = ws / "stages" / str(MODELS[model]) / "train"
        cfg, ckpt = ((str(params.teacher.config), str(params.teacher.checkpoint)) if MODELS[model] is None
                     else (str(train / "config.py"), str(train / "best_slim.pth")))
        run_infer(ws / "stages" / "index" / "thermal_adapt_images.json", step / "infer.json",
                  InferParams(config=cfg, checkpoint=ckpt, device="cpu", source="thermal_teacher", **VIEWS[view]),
                  cache_dir=probe / "cache", image_root=ws)
    return {thr: fused_f1(probe, step.name, "refine/refined.json", dict.fromkeys(CLASSES, thr), params) for thr in GRID}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.student_scales", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--candidate", choices=sorted(CANDIDATES), default="rgbpred")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    ap.add_argument("--views", nargs="+", choices=sorted(VIEWS), default=["640", "640+960"])
    ap.add_argument("--root", type=Path, default=Path("/tmp/rgb2thermal-msrs-adaptation"))
    a = ap.parse_args(argv)
    logging.getLogger("tasks.pseudo").setLevel(logging.ERROR)     # the class-map note, once per threshold
    from pipeline.params import load_params

    rows = ["| seed | labeller | view | rule: person threshold (F1) | rule: car threshold (F1) |", "|---:|---|---|---:|---:|"]
    for seed in a.seeds:
        ws = a.root / f"cand_{a.candidate}_seed{seed}"
        params = load_params(PARAMS, overrides(seed, False) + CANDIDATES[a.candidate][1])
        probe = a.root / f"scales_{a.candidate}_seed{seed}"
        (probe / "stages").mkdir(parents=True, exist_ok=True)
        for d in ("index", "refine"):        # what fused_f1 reads besides the labeller's detections
            if not (probe / "stages" / d).exists():
                (probe / "stages" / d).symlink_to(ws / "stages" / d)
        for model in a.models:
            for view in a.views:
                scores = score_view(ws, probe, model, view, params)
                ch = choose(scores, CLASSES)
                rows.append(f"| {seed} | {model} | {view} | " + " | ".join(
                    f"{ch[c]:.2f} ({scores[ch[c]][c]:.4f})" for c in CLASSES) + " |")
                print(rows[-1], flush=True)
    name = "student_scales.md" if a.candidate == "rgbpred" else f"student_scales_{a.candidate}.md"
    print(atomic.write_text(REPO / "benchmarks" / "results" / name, "\n".join(rows) + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
