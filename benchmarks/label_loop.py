"""The labelling loop measured: test mAP_50 after N thermal frames are labelled, the product's pick vs a random pick.

Why: ``rgb2thermal label pick`` claims to choose the frames worth a person's time. The claim is only
worth something against the obvious alternative, N frames picked at random, on the same seeds. The
person is SIMULATED by the dataset's own thermal labels of the picked frames (msrs-bench
``labels_thermal``): what a careful annotator would draw, with no labelling noise.

For each seed k and method (``pick``: the product's pick on a finished run of seed k; ``random``: N
adapt frames drawn uniformly with ``random.Random(k)``), the loop is run as a user runs it:

1. the picked frames' thermal labels are written as a COCO file (what CVAT exports);
2. ``rgb2thermal label import FILE --dataset COPY --as-training`` brings them into a copy of msrs-bench
   (hard links: the import replaces files atomically, so the shared data is never written);
3. ``rgb2thermal run`` trains on that copy with ``label.override: true`` (the human boxes replace the
   pseudo-labels on their frames), same recipe and seed as the N = 0 run, and is scored on the test
   split (whose labels no step reads).

The recipe is a candidate of :mod:`benchmarks.msrs_adaptation` (``--candidate``, default ``rgbpred``:
no RGB labels) cut to ``--rounds`` rounds (default 1: one training per run on 2 CPU cores); N = 0 is
that candidate's row of the same round and seeds. Results go to
``benchmarks/results/label_loop/<candidate>_<method>_n<N>_seed<k>.json`` and the table to
``benchmarks/results/label_loop.md``.

``--after CANDIDATE`` continues the finished loops of an earlier, shorter run (``--rounds`` 1 of a candidate
with the same round 1) to ``--rounds`` rounds of ``--candidate``: the person labelled the frames picked after
round 1, and the later students train with those frames overridden in every round. The run starts from a copy
of that loop's workspace and uses its data copy, so its student 1 is reused (same labels, same key); where that
workspace is gone (another machine), the frames of the loop's result file are labelled again into a new data
copy and student 1 is trained again (the same labels and seed: its test scores should repeat the loop's).

Rows ``pick-shares`` are the product's pick before it counted boxes (its criteria were shares of a
frame's boxes; measured 2026-12-06 morning, results kept under that name).

``--labels-only`` trains nothing: it scores the round-1 training labels after N frames are labelled,
pick vs random, for several N (:func:`label_curve`, ``benchmarks/results/label_loop_labels.md``).

Run: ``python -m benchmarks.label_loop [--seeds 0 1 2] [--n 20] [--methods pick random]``
(``--merge-only`` rebuilds the table).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import atomic

from benchmarks.label_rule import label_scores
from benchmarks.msrs_adaptation import CANDIDATES, CLI, DATA, OUT_DIR as CAND_DIR, PARAMS, REPO, measure, overrides
from benchmarks.msrs_adaptation import set_args as _sets

OUT_DIR = REPO / "benchmarks" / "results" / "label_loop"
RESULT = REPO / "benchmarks" / "results" / "label_loop.md"


def recipe(candidate: str, seed: int, rounds: int) -> list[str]:
    """The ``--set`` values of the candidate's run of ``seed``, cut to ``rounds`` rounds."""
    sets = [s for s in overrides(seed, False) + CANDIDATES[candidate][1]
            if not s.startswith(("self_training.rounds=", "eval.baselines="))]
    return [*sets, f"self_training.rounds={rounds}", "eval.baselines=[source_only]"]    # the oracle: in the N = 0 run


def picked_frames(method: str, n: int, seed: int, base_ws: Path, sets: list[str]) -> list[str]:
    """File names of the N thermal adapt frames to label: the product's pick on the finished run
    ``base_ws`` (same parameters), or a uniform random draw seeded by ``seed``."""
    if method == "pick":
        if (done := base_ws.parent / "loop_data" / f"{base_ws.name}_pick_n{n}_seed{seed}.json").is_file():
            return atomic.read_json(done)       # picked before (``--pick-only``, while the workspace was free)
        # the whole plan with its ``pick`` step (``label pick`` wants every earlier step current, and this
        # workspace's eval ran with more rounds): every step up to the students is reused
        subprocess.run([*CLI, "run", "--params", str(PARAMS), "--workspace", str(base_ws), "--cache-dir",
                        str(base_ws.parent / "cache"), *_sets([*sets, f"label.pick_n={n}", f"label.seed={seed}"])],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        names = [p["file_name"] for p in atomic.read_json(base_ws / "stages" / "pick" / "picked.json")]
        atomic.write_json(done, names)
        return names
    names = sorted(os.path.basename(im["file_name"])
                   for im in atomic.read_json(base_ws / "stages" / "index" / "thermal_adapt.json")["images"])
    return random.Random(seed).sample(names, n)


def simulated_person(names: list[str], base_ws: Path, out: Path) -> Path:
    """A COCO file of ``names`` with the dataset's own thermal labels: the simulated annotator's export."""
    gt = atomic.read_json(base_ws / "stages" / "index" / "thermal_adapt.json")
    keep = {im["id"]: {**im, "file_name": os.path.basename(im["file_name"])} for im in gt["images"]
            if os.path.basename(im["file_name"]) in set(names)}
    assert len(keep) == len(names), f"frames not among the adapt frames: {sorted(set(names) - {im['file_name'] for im in keep.values()})}"
    anns = [a for a in gt["annotations"] if a["image_id"] in keep and not a.get("iscrowd")]
    return atomic.write_json(out, {"images": list(keep.values()), "annotations": anns, "categories": gt["categories"]})


def labelled_copy(names: list[str], data: Path, human: Path, index_ws: Callable[[], Path]) -> None:
    """A hard-linked copy of msrs-bench at ``data`` into which the simulated person's labels of ``names``
    (written to ``human``) are imported as training labels. ``index_ws``: gives a workspace whose index step
    has run on msrs-bench (called after the copy is made, before the import)."""
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(DATA, data, copy_function=os.link)
    simulated_person(names, index_ws(), human)
    subprocess.run([*CLI, "label", "import", str(human), "--dataset", str(data), "--as-training", "--no-dvc"],
                   check=True, cwd=REPO)


def _on_copy(sets: list[str], data: Path) -> list[str]:
    """``sets`` run on the data copy ``data`` with the person's boxes in place of the pseudo-labels."""
    return [s for s in sets if not s.startswith("data.roots=")] + [f"data.roots=[{{path: {data}, version: msrs}}]",
                                                                   "label.override=true"]


def _index_only(ws: Path, root: Path, data: Path, sets: list[str]) -> Path:
    """``ws`` with the index of the data copy ``data`` only (the import after it re-keys every later step)."""
    subprocess.run([*CLI, "run", "--params", str(PARAMS), "--workspace", str(ws), "--cache-dir", str(root / "cache"),
                    "--until", "index", *_sets(_on_copy(sets, data))], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return ws


def run_one(candidate: str, method: str, n: int, seed: int, rounds: int, root: Path,
            after: str | None = None) -> dict[str, Any]:
    """One loop: pick, simulated labelling, import into a copy of the data, retrain, score on test.

    ``after``: the tag of an earlier, shorter loop (``<candidate>_<method>_n<N>_seed<k>``) whose labelled
    frames this run keeps: the person labelled after that loop's rounds, and this run goes on to ``rounds``
    rounds with ``candidate``'s settings. It starts from a copy of that loop's workspace and uses its data
    copy, so the students it shares (same labels, same keys) are reused rather than trained again."""
    sets = recipe(candidate, seed, rounds)
    tag = f"{candidate}_{method}_n{n}_seed{seed}" + (f"_after-{after.split('_')[0]}" if after else "")
    ws, t0 = root / f"loop_{tag}", time.perf_counter()
    if after:
        earlier = atomic.read_json(OUT_DIR / f"{after}.json")
        names, data, human = earlier["frames"], root / "loop_data" / after, root / "loop_data" / f"{after}.json"
        if not ws.exists() and (root / f"loop_{after}").exists():
            shutil.copytree(root / f"loop_{after}", ws, symlinks=True)     # datasets/: links to the data
        elif not ws.exists():
            # that loop ran on another machine: the same frames labelled again (from its result file), in a
            # fresh workspace whose first step indexes the copy, so student 1 is trained again, not reused
            print(f"loop_{after} is not in {root}: labelling its {len(names)} frames again, student 1 trained again",
                  flush=True)
            labelled_copy(names, data, human, lambda: _index_only(ws, root, data, sets))
    else:
        base_ws = root / f"cand_{candidate}_seed{seed}"
        names = picked_frames(method, n, seed, base_ws, sets)
        data, human = root / "loop_data" / tag, root / "loop_data" / f"{tag}.json"
        labelled_copy(names, data, human, lambda: base_ws)
    subprocess.run([*CLI, "run", "--params", str(PARAMS), "--workspace", str(ws), "--cache-dir", str(root / "cache"),
                    *_sets(_on_copy(sets, data))], check=True, cwd=REPO)
    return {"candidate": candidate, "method": method, "n": n, "seed": seed, "rounds": rounds, "frames": sorted(names),
            "labelled_after": earlier["rounds"] if after else rounds,
            "seconds": round(time.perf_counter() - t0, 1), **measure(ws / "stages"), **training_labels(ws, human)}


def training_labels(ws: Path, human: Path) -> dict[str, Any]:
    """Why a pick helps or not: the round-1 training labels after the override, scored like every label set
    (F1 per class on the adapt frames' thermal labels), and the boxes per class on the labelled frames."""
    lab = atomic.read_json(ws / "stages" / "override" / "labels.json")
    copies = {im["id"] for im in lab["images"] if "copy_of" in im}       # label.human_repeat's copies: once
    lab = {**lab, "images": [im for im in lab["images"] if im["id"] not in copies],
           "annotations": [a for a in lab["annotations"] if a["image_id"] not in copies]}
    scores = label_scores(atomic.read_json(ws / "stages" / "index" / "thermal_adapt.json"), lab, ["person", "car"])
    f1 = {c: m["F1"] for c, m in scores.items()}
    labelled = atomic.read_json(human)
    names = {c["id"]: c["name"] for c in labelled["categories"]}
    boxes = {c: sum(names[a["category_id"]] == c for a in labelled["annotations"]) for c in ("person", "car")}
    return {"train_label_f1": f1, "labelled_boxes": boxes}


def label_curve(candidate: str, seeds: list[int], ns: list[int], root: Path) -> str:
    """The training labels after N frames are labelled, without training: for each seed and N, the round-1
    fused labels of the candidate's run with the dataset's thermal labels put on the picked frames
    (:func:`tasks.label_import.override_labels`, what the ``override`` step does), scored like every label
    set (F1 per class on all adapt frames). The product's pick is :func:`tasks.label_pick.pick_frames`
    on the files the ``pick`` step reads; the random pick as in :func:`picked_frames`."""
    from pipeline.params import load_params
    from tasks.label_import import override_labels
    from tasks.label_pick import pick_frames

    rows: dict[tuple[int, str], list[tuple[float, float, int, int]]] = {}
    for seed in seeds:
        st = root / f"cand_{candidate}_seed{seed}" / "stages"
        params = load_params(PARAMS, recipe(candidate, seed, 1))
        fuse, gt = params.stage_params("fuse"), atomic.read_json(st / "index" / "thermal_adapt.json")
        lab = atomic.read_json(st / "fuse" / "fused.json")
        sources = {"rgb": atomic.read_json(st / "refine" / "refined.json"),
                   "thermal": atomic.read_json(st / "pseudo@thermal" / "pseudo.json")}
        pool = atomic.read_json(st / "index" / "thermal_adapt_images.json")["images"]
        by_name = {os.path.basename(im["file_name"]): im["id"] for im in pool}
        base = label_scores(gt, lab, ["person", "car"])
        for n in ns:
            pick = pick_frames(lab, sources, pool, fuse.threshold, params.pick_params().replace(n=n, seed=seed))
            chosen = {"pick": {p.image_id for p in pick},
                      "random": {by_name[f] for f in random.Random(seed).sample(sorted(by_name), n)}}
            names = {c["id"]: c["name"] for c in gt["categories"]}
            for method, ids in chosen.items():
                sc = label_scores(gt, override_labels(lab, gt, ids), ["person", "car"])
                boxes = [sum(a["image_id"] in ids and names[a["category_id"]] == c and not a.get("iscrowd")
                             for a in gt["annotations"]) for c in ("person", "car")]
                rows.setdefault((n, method), []).append((sc["person"]["F1"] - base["person"]["F1"],
                                                         sc["car"]["F1"] - base["car"]["F1"], *boxes))
    lines = [f"Round-1 fused labels of `{candidate}` (person F1 {base['person']['F1']:.3f}, car {base['car']['F1']:.3f} "
             "with no frame labelled): F1 gain when N frames carry their thermal labels, mean ± sd over seeds "
             f"{', '.join(map(str, seeds))}; boxes on the labelled frames (person / car, seed means).", "",
             "| N | method | person F1 gain | car F1 gain | boxes labelled |", "|---:|---|---:|---:|---:|"]
    for (n, method), v in sorted(rows.items()):
        lines.append(f"| {n} | {method} | {_ms([x[0] for x in v], '+.3f')} | {_ms([x[1] for x in v], '+.3f')} | "
                     f"{statistics.mean(x[2] for x in v):.0f} / {statistics.mean(x[3] for x in v):.0f} |")
    return "\n".join(lines) + "\n"


def _ms(values: list[float], fmt: str = ".3f") -> str:
    return "—" if not values else f"{values[0]:{fmt}}" if len(values) == 1 else \
        f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):.3f}"


def _zero_and_oracle(cand: str, seeds: list[int], key: str) -> tuple[list[dict], list[dict]]:
    """The candidate's own runs of ``seeds``: its round ``key`` (N = 0) and its oracle, per seed.

    A run's last round is ``adapted`` (its earlier ones ``round1``, ``round2`` ...): taken for ``key`` only
    when that run had that many rounds (a 1-round candidate has no N = 0 row for a 3-round loop). A lever of
    the loop alone (``rgbpredttarep3``, ``rgblabelsttarep3``: never run without labelled frames, where they change
    nothing) takes the runs of the candidate it is compared with (``cand:NAME``)."""
    zero, oracle = [], []
    if not any((CAND_DIR / f"cand_{cand}_seed{s}.json").is_file() for s in seeds) and \
            CANDIDATES[cand][2].startswith("cand:"):
        cand = CANDIDATES[cand][2].split(":")[1]
    for s in seeds:
        p = CAND_DIR / f"cand_{cand}_seed{s}.json"
        g = json.loads(p.read_text())["grouped"] if p.is_file() else {}
        last = f"round{1 + sum(k.startswith('round') for k in g)}"
        if key in g or (key == last and "adapted" in g):
            zero.append(g.get(key) or g["adapted"])
        if "oracle" in g:
            oracle.append(g["oracle"])
    return zero, oracle


def _share(gs: list[dict], oracle: list[dict], cat: str) -> str:
    """mAP_50 (all frames) as a share of the same seed's oracle, mean ± sd over the seeds."""
    if len(gs) != len(oracle) or not gs:
        return "—"
    vals = [100 * g["all"][cat]["mAP_50"] / o["all"][cat]["mAP_50"] for g, o in zip(gs, oracle, strict=True)]
    return f"{vals[0]:.0f} %" if len(vals) == 1 else f"{statistics.mean(vals):.0f} ± {statistics.stdev(vals):.0f} %"


def report(runs: list[dict[str, Any]]) -> str:
    """One block per candidate and round count: N = 0 (the candidate's own runs), each method's N, the oracle."""
    cats, groups = ["person", "car"], ["day", "night", "all"]
    lines = ["| labelled frames | method | seeds | " + " | ".join(f"{c} {g}" for c in cats for g in groups)
             + " | person % of oracle | car % of oracle |", "|---:|---|---|" + "---:|" * 8]
    for cand, rounds in sorted({(r["candidate"], r["rounds"]) for r in runs}):
        mine = [r for r in runs if r["candidate"] == cand and r["rounds"] == rounds]
        seeds = sorted({r["seed"] for r in mine})
        zero, oracle = _zero_and_oracle(cand, seeds, f"round{rounds}")
        rows = [(0, "—", seeds if zero else [], zero)]
        for n, method in sorted({(r["n"], _method(r)) for r in mine}):
            rs = sorted((r for r in mine if r["n"] == n and _method(r) == method), key=lambda r: r["seed"])
            rows.append((n, method, [r["seed"] for r in rs], [r["grouped"]["adapted"] for r in rs]))
        rows.append(("all 170", "oracle (thermal labels)", seeds if len(oracle) == len(seeds) else [], oracle))
        lines.append(f"| *{cand}, round {rounds}* | | | " + " | " * 7 + " |")
        for n, method, ss, gs in rows:
            same = len(ss) == len(seeds)
            lines.append(f"| {n} | {method} | {', '.join(map(str, ss))} | "
                         + " | ".join(_ms([g[grp][c]["mAP_50"] for g in gs]) for c in cats for grp in groups) + " | "
                         + " | ".join(_share(gs, oracle, c) if same else "—" for c in cats) + " |")
    return "\n".join(lines + _label_lines(runs)) + "\n"


def _method(run: dict[str, Any]) -> str:
    """The method as the table names it: with the round after which the person labelled, when earlier."""
    after = run.get("labelled_after", run["rounds"])
    return run["method"] if after == run["rounds"] else f"{run['method']}, labelled after round {after}"


def _label_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Per method: the training labels' F1 after the override and the boxes on the labelled frames, per seed.

    A continued loop (``--after``) is left out: its round-1 labels are those of the loop it continues."""
    out = ["", "Round-1 training labels after the override (F1 on the adapt frames' thermal labels, person / car; "
           "N = 0: the fused labels) and the boxes a person drew on the labelled frames (person / car), per seed "
           "(a loop continued to more rounds has the labels of the loop it continues):", ""]
    runs = [r for r in runs if "train_label_f1" in r and r.get("labelled_after", r["rounds"]) == r["rounds"]]
    for (cand, n, method) in sorted({(r["candidate"], r["n"], r["method"]) for r in runs}):
        rs = sorted((r for r in runs if (r["candidate"], r["n"], r["method"]) == (cand, n, method)), key=lambda r: r["seed"])
        out.append(f"- {cand}, {method} {n}: " + "; ".join(
            f"seed {r['seed']}: F1 {r['train_label_f1']['person']:.3f} / {r['train_label_f1']['car']:.3f}, boxes "
            f"{r['labelled_boxes']['person']} / {r['labelled_boxes']['car']}" for r in rs))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.label_loop", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, nargs="+", default=[20])
    ap.add_argument("--methods", nargs="+", choices=["pick", "random"], default=["pick", "random"])
    ap.add_argument("--candidate", choices=sorted(CANDIDATES), default="rgbpred")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--root", type=Path, default=Path("/tmp/rgb2thermal-msrs-adaptation"),
                    help="the candidate's workspaces (benchmarks.msrs_adaptation --root) and the shared cache")
    ap.add_argument("--merge-only", action="store_true")
    ap.add_argument("--after", metavar="CANDIDATE",
                    help="keep the frames labelled in CANDIDATE's finished loop of the same method, N and seed (the "
                         "person labelled after its rounds) and go on to --rounds rounds from its workspace")
    ap.add_argument("--labels-only", action="store_true",
                    help="no training: the training labels' F1 after N frames are labelled, pick vs random "
                         "(results/label_loop_labels.md)")
    ap.add_argument("--remeasure", action="store_true", help="re-score the finished loop workspaces' training labels")
    ap.add_argument("--pick-only", action="store_true",
                    help="only run the product's pick on the seeds' finished runs (kept for the later loop runs)")
    args = ap.parse_args(argv)
    if args.labels_only:
        print(atomic.write_text(RESULT.with_name("label_loop_labels.md"),
                                label_curve(args.candidate, args.seeds, args.n, args.root)))
        return 0
    if args.pick_only:
        for seed in args.seeds:
            for n in args.n:
                base = args.root / f"cand_{args.candidate}_seed{seed}"
                print(seed, n, picked_frames("pick", n, seed, base, recipe(args.candidate, seed, args.rounds)))
        return 0
    if args.remeasure:          # add the training-label scores to runs measured before they existed
        for p in sorted(OUT_DIR.glob("*.json")):
            r = json.loads(p.read_text())
            tag = p.stem
            own, _, after = tag.partition("_after-")       # a continued loop: the earlier loop's labelled frames
            human = f"{after}{own.removeprefix(r['candidate'])}" if after else tag
            extra = training_labels(args.root / f"loop_{tag}", args.root / "loop_data" / f"{human}.json")
            atomic.write_json(p, {**r, **extra})
    elif not args.merge_only:
        for seed in args.seeds:
            for n in args.n:
                for method in args.methods:
                    after = f"{args.after}_{method}_n{n}_seed{seed}" if args.after else None
                    res = run_one(args.candidate, method, n, seed, args.rounds, args.root, after)
                    atomic.write_json(OUT_DIR / (f"{args.candidate}_{method}_n{n}_seed{seed}"
                                                 + (f"_after-{args.after}" if after else "") + ".json"), res)
                    print(f"{method} n={n} seed {seed}: {res['seconds'] / 60:.1f} min", flush=True)
    runs = [json.loads(p.read_text()) for p in sorted(OUT_DIR.glob("*.json"))]
    print(atomic.write_text(RESULT, report(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
