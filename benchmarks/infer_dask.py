"""The ``infer`` stage sharded over Dask: 1 vs 2 local worker processes, real teacher, real-sized frames.

Why: ``compute.workers`` is meant to spread the frames of a large set over several processes (or
machines). This measures what it gives on this machine and checks, on the way, that every variant
writes the same bytes. Set-up (real components): ``--frames`` distinct 640x480 thermal frames made
from the 253 msrs-bench thermal frames (the original, its mirror, and two shifted crops re-padded to
640x480, written as PNG: distinct contents, so nothing is a cache hit), the shared COCO YOLOX-nano
teacher (``../shared/models/yolox-nano-coco``, input 416), batch 8, ``chunk_size`` 64. Variants, each
on a cold cache: in this process (torch at 1 thread), a ``LocalCluster`` of 1 worker process, one of
2 worker processes (1 thread each: Dask's ``OMP_NUM_THREADS=1``). Times are the whole stage call
(cluster start and each worker's model load included) and the sum of the chunks' own seconds.

Run: ``python -m benchmarks.infer_dask [--frames 1012]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from core import atomic

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NANO = REPO.parent / "shared" / "models" / "yolox-nano-coco"
MSRS = REPO.parent / "shared" / "data" / "msrs-bench"


def make_frames(out: Path, n: int) -> Path:
    """``n`` distinct gray 640x480 frames from the msrs-bench thermal frames; their COCO image list."""
    import cv2
    import numpy as np

    from core.coco import new_dataset, save_dataset

    sources = sorted((MSRS / "thermal").glob("*.png"))
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for k in range(n):
        src, variant = sources[k % len(sources)], k // len(sources)
        img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        if variant % 2 == 1:
            img = img[:, ::-1]
        if variant >= 2:                                  # shift by 16 or 32 px, re-pad to the frame size
            s = 16 * (variant - 1)
            img = np.pad(img[s:, s:], ((0, s), (0, s)), mode="edge")
        path = out / f"{k:05d}.png"
        if not path.exists():
            cv2.imwrite(str(path), np.ascontiguousarray(img))
        images.append({"id": k + 1, "file_name": path.name, "width": img.shape[1], "height": img.shape[0]})
    return save_dataset(out / "frames.json", new_dataset(images, [], [{"id": 1, "name": "person"}], {}))


def run_variant(frames: Path, work: Path, workers: int, chunk: int) -> dict[str, Any]:
    import torch

    from core.hashing import file_sha256
    from tasks.compute import ComputeParams
    from tasks.infer import InferParams, run_infer

    params = InferParams(config=str(NANO / "yolox_nano_coco.py"), checkpoint=str(NANO / "yolox_nano_coco.pth"),
                         device="cpu", batch_size=8, min_score=0.05)
    cache, out = work / f"cache_{workers}", work / f"infer_{workers}.json"
    shutil.rmtree(cache, ignore_errors=True)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rep = run_infer(frames, out, params, cache_dir=cache,
                    compute=ComputeParams(workers=workers, chunk_size=chunk) if workers else None)
    wall = time.perf_counter() - t0
    c = rep.compute
    return {"workers": workers, "seconds": round(wall, 1), "frames": rep.counts["images_in"],
            "detections": rep.counts["detections"], "chunks": c.get("chunks", 0),
            "chunk_seconds_sum": round(sum(c.get("chunk_seconds", [])), 1), "sha": file_sha256(out)}


def to_markdown(rows: list[dict[str, Any]], n: int) -> str:
    base = next(r for r in rows if r["workers"] == 1)["seconds"]
    same = len({r["sha"] for r in rows}) == 1
    lines = ["## infer sharded over Dask (`compute.workers`)", "",
             f"`python -m benchmarks.infer_dask --frames {n}` on {platform.node() or 'this machine'}: "
             f"**{os.cpu_count()} CPU cores** shared with other jobs, so at most ~2x is possible here. {n} distinct "
             "640x480 thermal frames (msrs-bench, mirrored/shifted), COCO YOLOX-nano teacher at 416, batch 8, "
             "chunks of 64 frames, cold cache each. Seconds = the whole stage call (cluster start and model loads "
             "included).", "",
             "| where | seconds | speed-up vs 1 worker | chunks | sum of chunk seconds | detections |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        where = "this process (1 torch thread)" if r["workers"] == 0 else f"LocalCluster, {r['workers']} worker(s)"
        lines.append(f"| {where} | {r['seconds']} | {base / r['seconds']:.2f}x | {r['chunks']} | "
                     f"{r['chunk_seconds_sum']} | {r['detections']} |")
    lines += ["", "Outputs byte-identical across the rows: " + ("yes" if same else "**NO**") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.infer_dask", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1012, help="distinct frames (default 1012 = 4 x 253)")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "bench_infer_dask")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing results/")
    args = ap.parse_args(argv)
    if not (NANO / "yolox_nano_coco.pth").is_file() or not (MSRS / "thermal").is_dir():
        print(f"needs {NANO} and {MSRS}", file=sys.stderr)
        return 2
    frames = make_frames(args.work / "frames", args.frames)
    rows = []
    for workers in (0, 1, 2):
        rows.append(run_variant(frames, args.work, workers, args.chunk_size))
        print(rows[-1], flush=True)
    md = to_markdown(rows, args.frames)
    print(md)
    if not args.no_write:
        atomic.write_text(HERE / "results" / "infer_dask.md", md)
    return 0 if len({r["sha"] for r in rows}) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
