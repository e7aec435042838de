"""What a decision gains when it is made on N labelled thermal frames instead of on training labels.

Why: every decision the product makes (how many self-training rounds, which model nightly promotion
keeps) wants labelled thermal frames, which users rarely have; without them the rounds were chosen by
the rounds rule on the training labels (the fused labels' F1 on the adapt frames, which needs the
adapt frames' thermal labels: a benchmark's luxury, not a user's). The labelling loop gives a user N
labelled frames (``rgb2thermal label import`` puts them in the ``val`` split by default); this measures
what choosing the round on them buys.

For each seed k, every student of the candidate's finished run (rounds 1..R) is scored on N labelled
adapt frames by the function the pipeline's ``val`` step runs (:func:`tasks.compare.evaluate_columns`,
each model at the test size it pseudo-labels with, through the infer stage), and the round with the
best mAP_50 over all classes (``adapted.all.mAP_50``, nightly promotion's default metric) is chosen.
The frames: the product's pick for training (``tasks.label_pick.pick_frames`` on the round-1 files,
as ``benchmarks.label_loop``), its pick for a val split (``purpose="val"``), a uniform random draw
(``random.Random(k)``), and all 170 adapt frames. Each
choice is then reported by its test mAP_50 (the candidate's eval; read only for the report).

Limit, said in RESULTS: the students trained on these frames' pseudo-labels; an imported val split
leaves the training pool, so a user's val frames would be unseen. The person is simulated by the
dataset's thermal labels of those frames.

Run: ``python -m benchmarks.label_decisions [--candidate rgbpredtta4] [--seeds 0 1 2] [--n 10 20 40]``;
the table goes to ``benchmarks/results/label_decisions.md``.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
from pathlib import Path
from typing import Any

from core import atomic

from benchmarks.label_loop import recipe
from benchmarks.msrs_adaptation import CANDIDATES, OUT_DIR as CAND_DIR, PARAMS, REPO

RESULT = REPO / "benchmarks" / "results" / "label_decisions.md"
OUT = REPO / "benchmarks" / "results" / "label_decisions"
CLASSES = ["person", "car"]


def students(params) -> list[str]:
    """The students' step names, round 1 first (the plan's training steps of the self-training rounds)."""
    from pipeline.plan import plan

    return [s.name for s in plan(params) if s.kind == "train" and s.name.startswith("student")]


def labelled_sets(ws: Path, seed: int, ns: list[int]) -> dict[str, set[int]]:
    """Image ids of the labelled frames, for each N: ``pick N`` (the product's pick for training: the most
    uncertain), ``val pick N`` (its pick for a val split: ``label pick --for val``), ``random N`` (uniform);
    and ``all 170``."""
    from tasks.label_pick import pick_frames

    st = ws / "stages"
    lab = atomic.read_json(st / "fuse" / "fused.json")
    sources = {"rgb": atomic.read_json(st / "refine" / "refined.json"),
               "thermal": atomic.read_json(st / "pseudo@thermal" / "pseudo.json")}
    pool = atomic.read_json(st / "index" / "thermal_adapt_images.json")["images"]
    by_name = {os.path.basename(im["file_name"]): im["id"] for im in pool}
    one = recipe_params(seed, 1)        # round 1's parameters: the same in rgbpred, rgbpredtta and rgbpredtta4
    out: dict[str, set[int]] = {}
    for n in ns:
        pick = pick_frames(lab, sources, pool, one.stage_params("fuse").threshold, one.pick_params().replace(n=n, seed=seed))
        out[f"pick {n}"] = {p.image_id for p in pick}
        val = pick_frames(lab, sources, pool, one.stage_params("fuse").threshold,
                          one.pick_params().replace(n=n, seed=seed, purpose="val"))
        out[f"val pick {n}"] = {p.image_id for p in val}
        out[f"random {n}"] = {by_name[f] for f in random.Random(seed).sample(sorted(by_name), n)}
    out["all 170"] = set(by_name.values())
    return out


def recipe_params(seed: int, rounds: int, candidate: str = "rgbpredtta"):
    from pipeline.params import load_params

    return load_params(PARAMS, recipe(candidate, seed, rounds))


def score_students(ws: Path, ids: set[int], out: Path, params) -> dict[str, dict[str, float]]:
    """mAP_50 per class and over all classes of every student on the frames ``ids`` (the ``val`` step's way)."""
    from tasks.compare import evaluate_columns

    gt = atomic.read_json(ws / "stages" / "index" / "thermal_adapt.json")
    subset = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    gt_file = atomic.write_json(out / "gt.json", subset)
    models = {}
    for k, name in enumerate(students(params), start=1):
        train = ws / "stages" / name / "train"
        models[f"round{k}"] = params.eval_infer_params(str(train / "config.py"), str(train / "best_slim.pth"),
                                                       "thermal_student")
    res = evaluate_columns(gt_file, models, out, ["mAP_50"], columns=list(models), cache_dir=out.parent.parent / "cache",
                           image_root=ws)
    return {col: {c: res.evaluation.metrics[col][c]["mAP_50"] for c in [*CLASSES, "all"]} for col in models}


def scores_on_test(candidate: str, seed: int, rounds: int) -> dict[str, dict[str, float]]:
    """Test mAP_50 of every round's student (per class and all classes, all frames), from the candidate's
    measured run (``benchmarks.msrs_adaptation``): read for the report only, never for a choice."""
    grouped = atomic.read_json(CAND_DIR / f"cand_{candidate}_seed{seed}.json")["grouped"]
    return {f"round{k}": {c: grouped["adapted" if k == rounds else f"round{k}"]["all"][c]["mAP_50"]
                          for c in [*CLASSES, "all"]} for k in range(1, rounds + 1)}


def run_seed(candidate: str, seed: int, ns: list[int], root: Path) -> dict[str, Any]:
    """Per labelled set: each student's mAP_50 on it and the round it chooses; the test scores."""
    ws = root / f"cand_{candidate}_seed{seed}"
    params = recipe_params(seed, int(_rounds(candidate)), candidate)
    probe = root / "decisions" / f"{candidate}_seed{seed}"
    sets = labelled_sets(ws, seed, ns)
    val = {name: score_students(ws, ids, probe / name.replace(" ", "_"), params) for name, ids in sets.items()}
    chosen = {name: max(v, key=lambda col: (v[col]["all"], col)) for name, v in val.items()}
    return {"candidate": candidate, "seed": seed, "val": val, "chosen": chosen,
            "test": scores_on_test(candidate, seed, len(students(params)))}


def _rounds(candidate: str) -> str:
    return next(s.split("=")[1] for s in CANDIDATES[candidate][1] if s.startswith("self_training.rounds="))


def _ms(values: list[float]) -> str:
    return f"{values[0]:.3f}" if len(values) == 1 else f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(runs: list[dict[str, Any]], shipped: int) -> str:
    """Per labelled set: the round chosen per seed and its test mAP_50; beside them, what a user without
    labelled frames gets (the shipped recipe's ``shipped`` rounds) and the best round on test (hindsight)."""
    runs = sorted(runs, key=lambda r: r["seed"])
    seeds = ", ".join(str(r["seed"]) for r in runs)
    rows = [(f"no labelled frame: the recipe's {shipped} rounds (the rounds rule on msrs-bench's adapt labels)",
             [f"round{shipped}"] * len(runs))]
    rows += [(f"{name} labelled frames", [r["chosen"][name] for r in runs]) for name in runs[0]["chosen"]]
    rows.append(("hindsight: best on test (not a decision)",
                 [max(r["test"], key=lambda c: r["test"][c]["all"]) for r in runs]))
    lines = [f"`{runs[0]['candidate']}`, seeds {seeds}: the round chosen (per seed) and its test mAP_50 "
             "(mean ± sd over the seeds).", "",
             "| decided on | round chosen per seed | test person | test car | test all |", "|---|---|---:|---:|---:|"]
    for what, chosen in rows:
        cells = [_ms([r["test"][c][cls] for r, c in zip(runs, chosen, strict=True)]) for cls in [*CLASSES, "all"]]
        lines.append(f"| {what} | {' / '.join(c.removeprefix('round') for c in chosen)} | " + " | ".join(cells) + " |")
    lines += ["", "Each student's mAP_50 (all classes) on the labelled frames, per seed (round 1 … last):", ""]
    for name in runs[0]["val"]:
        lines.append(f"- {name}: " + "; ".join(
            f"seed {r['seed']}: " + " / ".join(f"{r['val'][name][c]['all']:.3f}" for c in sorted(r["val"][name]))
            for r in runs))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.label_decisions", description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidate", choices=sorted(CANDIDATES), default="rgbpredtta4")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--root", type=Path, default=Path("/tmp/rgb2thermal-msrs-adaptation"),
                    help="the candidate's finished workspaces (benchmarks.msrs_adaptation --root)")
    ap.add_argument("--shipped-rounds", type=int, default=3,
                    help="the rounds of the shipped recipe: what a user without labelled frames runs (default: 3)")
    ap.add_argument("--merge-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.merge_only:
        for seed in args.seeds:
            atomic.write_json(OUT / f"{args.candidate}_seed{seed}.json", run_seed(args.candidate, seed, args.n, args.root))
    runs = [atomic.read_json(OUT / f"{args.candidate}_seed{s}.json") for s in args.seeds]
    print(atomic.write_text(RESULT, report(runs, args.shipped_rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
