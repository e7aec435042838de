"""Benchmark: the ``infer`` stage vs a naive ``inference_detector`` loop on REAL frames.

Frames: ``../shared/data/msrs-bench`` (640x480 PNG; thermal 8-bit gray and/or RGB, all distinct
contents so a cold cache infers every one). Model: the real COCO YOLOX-nano teacher of
``../shared/models/yolox-nano-coco`` (its config's test size, 416x416, keep-ratio resize + pad).
CPU, ``torch.set_num_threads(--threads)`` (default 2).

Methods, each in a fresh process (whole-process wall measured by this parent: interpreter start,
imports, loading the model, the loop, writing), in ONE run, order alternating between repetitions,
median of ``--reps`` (default 3):

* ``naive``: ``mmdet.apis.init_detector`` once + ``inference_detector(model, path)`` per frame
  (batch 1; the test pipeline is rebuilt and the file loaded by mmcv per call);
* ``stage``: ``load_detector`` + ``tasks.infer.run_infer`` over a COCO file of the same frames,
  cold cache (a fresh cache folder per run), ``batch_size`` ``--batch-size`` (default 8);
* ``bare`` (``--bare``, once, after the repetitions): the forward pass alone: frames decoded and
  pre-processed before the clock starts, then ``detection.detector.predict_packed`` over batches
  of ``--batch-size`` and of 1 (the floor any loop pays; the stage can beat the naive loop by at
  most naive / bare);
* ``baseline`` (with ``--baseline-tree DIR``): the stage from another checkout (the code before a
  change), and whether its output file is byte-identical to ``stage``'s.

Model loading is INCLUDED in the whole-process numbers of every method (each loads its model
once) and EXCLUDED from the ``loop`` numbers (child-measured: from the first frame to the output).
``--profile`` adds a cProfile of the stage's loop (top functions by own time).

Run: ``python -m benchmarks.infer_real [--modality thermal rgb] [--reps 3] [--limit N]``; writes
``benchmarks/results/infer_real.md`` and ``.json`` (atomic).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data" / "msrs-bench"
MODEL = SHARED / "models" / "yolox-nano-coco"
RESULT = REPO / "benchmarks" / "results" / "infer_real.md"

# One child per method and run; prints one JSON line. argv: method coco out cache threads batch config checkpoint
_CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
method, coco, out, cache, threads, batch, config, checkpoint, workers = sys.argv[1:10]
import torch
torch.set_num_threads(int(threads))
from pathlib import Path
res = {"method": method}
if method == "naive":
    from mmdet.apis import inference_detector, init_detector
    from core.atomic import read_json
    files = [im["file_name"] for im in read_json(coco)["images"]]
    t = time.perf_counter()
    model = init_detector(config, checkpoint, device="cpu")
    res["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    n = 0
    for f in files:
        n += len(inference_detector(model, f).pred_instances)
    res["loop_s"] = time.perf_counter() - t
    res["detections_at_0.01"] = n
elif method in ("stage", "baseline", "profile"):
    from detection.detector import load_detector
    from tasks.infer import InferParams, run_infer
    t = time.perf_counter()
    det = load_detector(config, checkpoint, "cpu")
    res["load_s"] = time.perf_counter() - t
    params = InferParams(config=config, checkpoint=checkpoint, device="cpu", batch_size=int(batch))
    t = time.perf_counter()
    if method == "profile":
        import cProfile, io, pstats
        prof = cProfile.Profile()
        prof.enable()
    rep = run_infer(Path(coco), Path(out), params, cache_dir=Path(cache), detector=det)
    res["loop_s"] = time.perf_counter() - t
    if method == "profile":
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
        res["profile"] = s.getvalue()
    res["counts"] = rep.counts
elif method == "sharded":      # the stage with compute.workers: each Dask worker loads the model once
    from tasks.compute import ComputeParams
    from tasks.infer import InferParams, run_infer
    params = InferParams(config=config, checkpoint=checkpoint, device="cpu", batch_size=int(batch))
    res["load_s"] = 0.0           # (in the workers, inside loop_s with the cluster start)
    t = time.perf_counter()
    rep = run_infer(Path(coco), Path(out), params, cache_dir=Path(cache),
                    compute=ComputeParams(workers=int(workers), threads_per_worker=1))
    res["loop_s"] = time.perf_counter() - t
    res["counts"] = rep.counts
else:  # bare
    from core.atomic import read_json
    from core.images import read_image, to_bgr_u8
    from detection.detector import build_test_pipeline, load_detector, predict_packed, preprocess
    det = load_detector(config, checkpoint, "cpu")
    pipe = build_test_pipeline(det)
    prep = [preprocess(pipe, to_bgr_u8(read_image(im["file_name"])[0])) for im in read_json(coco)["images"]]
    for bs in (int(batch), 1):
        predict_packed(det, [p for p, _ in prep[:bs]], [s for _, s in prep[:bs]])   # warm-up
        t = time.perf_counter()
        for i in range(0, len(prep), bs):
            predict_packed(det, [p for p, _ in prep[i:i + bs]], [s for _, s in prep[i:i + bs]])
        res[f"forward_bs{bs}_s"] = time.perf_counter() - t
res["torch_threads"] = torch.get_num_threads()
res["child_s"] = time.perf_counter() - t_start
print(json.dumps(res))
"""


def frames_coco(work: Path, modalities: list[str], limit: int | None) -> tuple[Path, int]:
    """A COCO file listing the msrs-bench frames (absolute paths); refuses duplicate contents
    (a duplicate would be a cache hit for the stage and not for the naive loop)."""
    from core import coco
    from core.images import read_image

    files = [p for m in modalities for p in sorted((DATA / m).glob("*.png"))[:limit]]
    images, seen = [], set()
    for i, p in enumerate(files):
        data = p.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            raise SystemExit(f"{p} has the same content as an earlier frame: the comparison needs distinct frames")
        seen.add(digest)
        img, _ = read_image(p, data)
        images.append({"id": i + 1, "file_name": str(p), "width": int(img.shape[1]), "height": int(img.shape[0])})
    path = work / "frames.json"
    coco.save_dataset(path, coco.new_dataset(images, [], [{"id": 1, "name": "person"}]))
    return path, len(images)


def run_child(method: str, coco: Path, work: Path, tag: str, args: argparse.Namespace, tree: Path) -> dict:
    """One method in a fresh process; returns its JSON line plus the parent-measured wall time."""
    out, cache = work / f"out_{tag}.json", work / f"cache_{tag}"
    cmd = [sys.executable, "-c", _CHILD, method, str(coco), str(out), str(cache), str(args.threads),
           str(args.batch_size), str(MODEL / "yolox_nano_coco.py"), str(MODEL / "yolox_nano_coco.pth"),
           str(args.workers or 0)]
    env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    if out.is_file():
        res["output_sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    return res


def measure(args: argparse.Namespace) -> dict:
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="r2t-infer-real-") as tmp:
        work = Path(tmp)
        coco, n = frames_coco(work, args.modality, args.limit)
        methods = ["naive", "stage"] + (["baseline"] if args.baseline_tree else []) + (["sharded"] if args.workers else [])
        for r in range(args.reps):
            order = methods if r % 2 == 0 else methods[::-1]
            for m in order:
                tree = Path(args.baseline_tree) if m == "baseline" else REPO
                res = run_child(m, coco, work, f"{m}{r}", args, tree)
                res["rep"] = r
                runs.append(res)
                print(json.dumps({k: v for k, v in res.items() if k != "profile"}), flush=True)
        if args.bare:                   # once: the floor, not a competitor
            runs.append({**run_child("bare", coco, work, "bare", args, REPO), "rep": 0})
        profile = run_child("profile", coco, work, "profile", args, REPO) if args.profile else None
    return {"frames": n, "modality": args.modality, "threads": args.threads, "batch_size": args.batch_size,
            "workers": args.workers,
            "runs": runs, "profile": profile, "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_end": os.getloadavg()[0]}


def _med(runs: list[dict], method: str, key: str) -> float | None:
    vals = [r[key] for r in runs if r["method"] == method and key in r]
    return statistics.median(vals) if vals else None


def to_markdown(res: dict) -> str:
    runs, n = res["runs"], res["frames"]
    naive_w, stage_w = _med(runs, "naive", "wall_s"), _med(runs, "stage", "wall_s")
    naive_l, stage_l = _med(runs, "naive", "loop_s"), _med(runs, "stage", "loop_s")
    lines = ["## Label transfer: the infer stage vs a naive loop on real frames (`benchmarks/infer_real.py`)", "",
             f"{n} msrs-bench frames ({' + '.join(res['modality'])}, 640x480 PNG, distinct contents), the real COCO "
             f"YOLOX-nano teacher at 416x416, CPU ({platform.machine()}, {os.cpu_count()} cores shared with other "
             f"jobs; load average at the end {res['load_average_end']:.1f}), torch threads {res['threads']}, stage "
             f"batch {res['batch_size']}, cold cache. Each method in a fresh process, order alternating, median of "
             f"{len([r for r in runs if r['method'] == 'naive'])}; measured {res['measured_at']}.", "",
             "| method | whole process s (median) | loop s (median, model loaded) | per frame ms (loop) | runs (wall s) |",
             "|---|---:|---:|---:|---|"]
    for m in ("naive", "stage", "baseline", "sharded"):
        if _med(runs, m, "wall_s") is None:
            continue
        w, lp = _med(runs, m, "wall_s"), _med(runs, m, "loop_s")
        lines.append(f"| {m} | {w:.1f} | {lp:.1f} | {lp / n * 1000:.0f} | "
                     + ", ".join(f"{r['wall_s']:.1f}" for r in runs if r["method"] == m) + " |")
    lines += ["", f"Speed-up of the stage vs the naive loop: **{naive_w / stage_w:.2f}x** whole process, "
              f"**{naive_l / stage_l:.2f}x** loop only (goal >= 2x: {naive_w / stage_w >= 2})."]
    fb, f1 = _med(runs, "bare", f"forward_bs{res['batch_size']}_s"), _med(runs, "bare", "forward_bs1_s")
    if fb is not None:
        lines += ["", f"Bare forward pass (frames pre-processed before the clock; `predict_packed`: data preprocessor "
                  f"+ `test_step`): batch {res['batch_size']} {fb:.1f} s ({fb / n * 1000:.0f} ms/frame), batch 1 "
                  f"{f1:.1f} s ({f1 / n * 1000:.0f} ms/frame) = {f1 / naive_l:.0%} of the naive loop. The best any "
                  f"loop can do at batch {res['batch_size']} is naive / bare = {naive_l / fb:.2f}x (loop only); the "
                  f"stage is at {stage_l / fb:.2f}x its bare forward time."]
    sharded_w, sharded_l = _med(runs, "sharded", "wall_s"), _med(runs, "sharded", "loop_s")
    if sharded_w is not None:
        same = len({r.get("output_sha256") for r in runs if r["method"] in ("stage", "sharded")}) == 1
        lines += ["", f"The stage with `compute.workers: {res['workers']}` (Dask worker processes of 1 torch thread each; "
                  f"cluster start and the workers' model loads inside its loop time) vs the naive loop: "
                  f"**{naive_w / sharded_w:.2f}x** whole process, **{naive_l / sharded_l:.2f}x** loop only "
                  f"(goal >= 2x: {naive_w / sharded_w >= 2}); output byte-identical to the one-process stage's: {same}."]
    shas = {r["method"]: r.get("output_sha256") for r in runs if r["method"] in ("stage", "baseline")}
    if "baseline" in shas:
        same = len({r.get("output_sha256") for r in runs if r["method"] in ("stage", "baseline")}) == 1
        lines += ["", f"Output of the stage byte-identical to the baseline tree's, every run: {same} "
                  f"(sha256 {shas['stage'][:16]})."]
    if res.get("profile"):
        lines += ["", "cProfile of the stage's loop (top by own time):", "", "```",
                  res["profile"]["profile"].strip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from core import atomic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", nargs="+", default=["thermal", "rgb"], choices=["thermal", "rgb"])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N frames of each modality")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--bare", action="store_true", help="also time the bare forward pass")
    ap.add_argument("--profile", action="store_true", help="also profile the stage's loop (cProfile)")
    ap.add_argument("--baseline-tree", default=None, help="another checkout whose stage to time and compare")
    ap.add_argument("--workers", type=int, default=None,
                    help="also time the stage sharded over a local Dask cluster of N one-thread workers")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    res = measure(args)
    md = to_markdown(res)
    atomic.write_text(args.out, md)
    atomic.write_json(args.out.with_suffix(".json"), res)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
