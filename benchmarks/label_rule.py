"""The label rule: per-class thresholds of a thermal pseudo-label source, chosen on the adapt frames.

Why: a thermal source's thresholds decide what the student is taught, and they must be chosen
without the test split. When the adapt frames have thermal labels (the synthetic demo data;
a benchmark's own labels), the rule is: for each class, the **highest threshold whose fused
label F1 is within 0.01 of the best** (F1 of one-to-one matches at IoU >= 0.5, the fused set
= this source fused with the RGB side as the pipeline fuses them). The highest such threshold,
because at equal F1 fewer false boxes cost the student less than missed ones.

Reads a finished workspace (``rgb2thermal run``/``demo``): the thermal source's detections
(``stages/<infer step>/infer.json``), the RGB side (``stages/refine/refined.json``), the
adapt thermal labels (``stages/index/thermal_adapt.json``) and the run's parameters
(``params.run.yaml`` beside ``stages/`` or ``--params``). Nothing is trained or re-inferred.

Run: ``python -m benchmarks.label_rule [WORKSPACE] [--infer-step STEP ...]`` (default: ``workspace/demo``,
both sources: ``infer@thermal`` = the teacher's labels, ``infer@round2`` = student 1's); the section
goes to ``benchmarks/results/label_rule.md``.
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import atomic

GRID = [round(0.05 * k, 2) for k in range(1, 19)]     # 0.05 ... 0.90
TOLERANCE = 0.01


def fused_f1(ws: Path, infer_step: str, rgb: str, thresholds: dict[str, float], params) -> dict[str, float]:
    """F1 per class of the fused labels when the thermal source is cut at ``thresholds``
    (``params``: the run's ``PipelineParams``; the source's other pseudo-label options as the run had them)."""
    from tasks.fuse import run_fuse
    from tasks.pseudo import run_pseudo
    from pipeline.params import set_values

    stages = ws / "stages"
    classes = list(params.data.classes)
    base = set_values(params.thermal_source.pseudo)      # the keys set there (a typed section)
    if infer_step != "infer@thermal":      # a student's labels: self_training.pseudo over the teacher's
        base = params.self_training.round_pseudo(base)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        run_pseudo(stages / infer_step / "infer.json", t / "pseudo.json",
                   params.stage_params("pseudo", {**base, "thresholds": thresholds}))
        run_fuse({"rgb": stages / rgb, "thermal": t / "pseudo.json"}, t / "fused.json", params.stage_params("fuse"))
        scores = label_scores(atomic.read_json(stages / "index" / "thermal_adapt.json"), atomic.read_json(t / "fused.json"),
                              classes)
    return {c: m["F1"] for c, m in scores.items()}


def label_scores(gt: dict, labels: dict, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per class of a label set against thermal labels (one-to-one matches at
    IoU >= 0.5, all frames; :func:`tasks.quality.evaluate`): the numbers the label rule compares."""
    from tasks.quality import evaluate

    res, _ = evaluate(gt, labels, classes=classes)
    out = {}
    for c in classes:
        m = res.table[c]["all"]
        out[c] = {"P": m["precision"] or 0.0, "R": m["recall"] or 0.0,
                  "F1": 2 * m["tp"] / (m["gt"] + m["pred"]) if m["gt"] + m["pred"] else 0.0}
    return out


def choose(scores: dict[float, dict[str, float]], classes: list[str]) -> dict[str, float]:
    """The rule: per class, the highest threshold within ``TOLERANCE`` of the best F1."""
    out = {}
    for c in classes:
        best = max(s[c] for s in scores.values())
        out[c] = max(thr for thr, s in scores.items() if s[c] >= best - TOLERANCE)
    return out


def _table(scores: dict[float, dict[str, float]], classes: list[str]) -> str:
    rows = ["| threshold | " + " | ".join(f"{c} fused F1" for c in classes) + " |",
            "|---:|" + "---:|" * len(classes)]
    rows += [f"| {thr:.2f} | " + " | ".join(f"{s[c]:.3f}" for c in classes) + " |" for thr, s in scores.items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workspace", type=Path, nargs="?", default=Path("workspace/demo"),
                    help="a finished run's workspace (default: workspace/demo; `rgb2thermal demo` "
                         "is run first when it has no stages/)")
    ap.add_argument("--infer-step", action="append", dest="infer_steps",
                    help="a thermal source's inference step (repeatable; default: infer@thermal and "
                         "infer@round2 where present)")
    ap.add_argument("--rgb", default="refine/refined.json", help="the RGB side, relative to stages/")
    ap.add_argument("--params", type=Path, help="default: WORKSPACE/params.run.yaml")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing results/")
    a = ap.parse_args(argv)
    if not (a.workspace / "stages").is_dir():
        print(f"{a.workspace} has no finished run: running `rgb2thermal demo --workspace {a.workspace}`", flush=True)
        subprocess.run([str(Path(sys.executable).parent / "rgb2thermal"), "demo", "--workspace", str(a.workspace)],
                       check=True)
    # the run itself logged (and recorded) any class-map warning once; 18 thresholds x sources would repeat it
    logging.getLogger("tasks.pseudo").setLevel(logging.ERROR)
    params_yaml = a.params or a.workspace / "params.run.yaml"
    from pipeline.params import load_params
    params = load_params(params_yaml)
    classes = list(params.data.classes)
    steps = a.infer_steps or [s for s in ("infer@thermal", "infer@round2") if (a.workspace / "stages" / s).is_dir()]
    parts = ["## The label rule: thermal-source thresholds chosen on the adapt labels (benchmarks/label_rule.py)\n",
             f"Workspace `{a.workspace}` ({time.strftime('%Y-%m-%d %H:%M')}), parameters `{params_yaml}`. Fused labels "
             f"(the source cut at one threshold for every class, fused with `{a.rgb}` as the run fuses) scored on "
             "the adapt frames' thermal labels (F1 of one-to-one matches at IoU >= 0.5); never the test split. "
             f"Rule: per class, the highest threshold within {TOLERANCE} of the best F1.\n"]
    for step in steps:
        scores = {}
        for thr in GRID:
            scores[thr] = fused_f1(a.workspace, step, a.rgb, {c: thr for c in classes}, params)
        chosen = choose(scores, classes)
        parts += [f"### `{step}`\n", _table(scores, classes) + "\n",
                  "Rule: " + ", ".join(f"{c} **{t:.2f}** (F1 {scores[t][c]:.3f})" for c, t in chosen.items()) + "\n"]
    md = "\n".join(parts)
    print(md)
    if not a.no_write:
        atomic.write_text(Path(__file__).resolve().parent / "results" / "label_rule.md", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
