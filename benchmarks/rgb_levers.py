"""Levers of the unlabelled-RGB path, scored by the label rule on the adapt frames (never test).

Why: without RGB labels the RGB side is the teacher's RGB predictions, and every choice on that
path (thresholds, refinement, test size, TTA) must be made without the test split. Each setting
here runs the shipped recipe with ``rgb_source.boxes=predictions`` up to round 1's fused labels
(``rgb2thermal run --until fuse``) and scores those labels against the adapt frames' thermal
labels: precision / recall / F1 of one-to-one matches at IoU >= 0.5 (:mod:`tasks.quality`), per
class. The label rule (``benchmarks/label_rule.py``) keeps, per class, a setting whose F1 is within
0.01 of the best. Nothing is trained; all settings share one per-image cache.

Run: ``python -m benchmarks.rgb_levers [--root DIR] [--only NAME ...]``; the table goes to
``benchmarks/results/rgb_levers.md``.
"""
from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from core import atomic

from benchmarks.label_rule import label_scores
from benchmarks.msrs_adaptation import CLI, PARAMS, REPO, overrides, set_args

BASE = ["rgb_source.boxes=predictions", "self_training.rounds=1", "eval.baselines=[source_only]"]
#: RGB and thermal cars from 0.4 (``car04``), the base of the later settings
CAR04 = ["pseudo.thresholds={person: 0.5, car: 0.4}", "thermal_source.pseudo.thresholds={person: 0.15, car: 0.4}"]
#: name -> (what it is, --set values on top of BASE)
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "as_shipped": ("params/real.yaml with RGB predictions ≥ 0.5 (people refined; thermal person 0.15 / car 0.7)", []),
    "refine_all": ("both classes refined", ["refine.classes=null"]),
    "car04": ("RGB cars ≥ 0.4, thermal cars ≥ 0.4 (the rule on the predictions path, 2026-12-02)",
              [*CAR04]),
    "car04_all": ("car04 + both classes refined",
                  [*CAR04,
                   "refine.classes=null"]),
    "rgb640": ("car04 + the RGB teacher at the frames' width (640 px)",
               [*CAR04,
                "infer.input_size=[640, 640]"]),
    "rgbflip": ("car04 + RGB flip TTA",
                [*CAR04,
                 "infer.tta=[flip]", "thermal_source.infer.tta=[]"]),
}
CLASSES = ["person", "car"]


def run_setting(name: str, root: Path) -> dict[str, dict[str, float]]:
    """Round 1's fused labels of one setting, scored per class on the adapt frames."""
    ws = root / name
    sets = overrides(0, False) + BASE + SETTINGS[name][1]      # no student trains: the seed does not matter
    subprocess.run([*CLI, "run", "--params", str(PARAMS), "--workspace", str(ws), "--cache-dir", str(root / "cache"),
                    "--until", "fuse", *set_args(sets)], check=True, cwd=REPO)
    return label_scores(atomic.read_json(ws / "stages" / "index" / "thermal_adapt.json"),
                        atomic.read_json(ws / "stages" / "fuse" / "fused.json"), CLASSES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/rgb2thermal-rgb-levers"))
    ap.add_argument("--only", nargs="+", choices=sorted(SETTINGS))
    args = ap.parse_args()
    rows = []
    for name in args.only or list(SETTINGS):
        t0 = time.perf_counter()
        scores = run_setting(name, args.root)
        rows.append((name, scores, time.perf_counter() - t0))
        print(name, {c: round(s["F1"], 4) for c, s in scores.items()}, flush=True)
    lines = ["| setting | what | person P / R | person F1 | car P / R | car F1 | seconds |", "|---|---|---|---:|---|---:|---:|"]
    for name, s, sec in rows:
        lines.append(f"| `{name}` | {SETTINGS[name][0]} | " + " | ".join(
            f"{s[c]['P']:.2f} / {s[c]['R']:.2f} | {s[c]['F1']:.4f}" for c in CLASSES) + f" | {sec:.0f} |")
    atomic.write_text(REPO / "benchmarks" / "results" / "rgb_levers.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
