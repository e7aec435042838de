"""Benchmark: label-transfer inference and warp (stages ``infer``, ``pseudo``, ``warp``).

Measures, in one run, on generated data (``data.synthetic``) with a real mmdet YOLOX-tiny
with RANDOM weights (made to emit a few boxes per image) and a 128 px test pipeline, so it
runs in minutes on 2 CPU cores:

1. inference throughput: the ``infer`` stage (batched, cache cold) vs a naive per-image
   ``mmdet.apis.inference_detector`` loop on the same images (goal >= 2x), and vs the
   model's bare forward time (``model.predict`` on pre-processed batches; goal <= 1.5x);
2. box warp throughput: ``registration.warp.warp_boxes`` on 1M boxes, and the whole ``warp``
   stage (JSON in/out, per-image homography lookup) in boxes/s (goal >= 1M/s for the former);
3. incremental: infer N images (cold cache), add 10, re-run: re-run time / first (goal <= 5%);
4. memory: peak RSS of infer+pseudo+warp on 1k vs 10k images, each in a fresh process
   (goal: within +-10%). C2's ``refine`` plugs in at :func:`_child_pipeline` (marked there).

Usage: ``python -m benchmarks.label_transfer_infer [--quick]``; writes
``benchmarks/results/label_transfer_infer.md`` (atomic). ``--quick`` shrinks every size for a
smoke run (its numbers are not the goals' numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "label_transfer_infer.md"
DET_CLASSES = ("person", "bicycle", "car", "truck", "bus")
RGB_SIZE, THERMAL_SIZE = (160, 128), (128, 104)
PARTS = ("inference", "warp", "incremental", "rss")


def make_tiny_detector(out_dir: Path, classes=DET_CLASSES, scale: int = 128) -> tuple[Path, Path]:
    """A YOLOX-tiny config with a ``scale`` px test pipeline + a random-weight checkpoint that detects.

    Freshly initialised YOLOX is degenerate at inference: activations shrink to ~0 through the
    random backbone (BN statistics are the identity), so every anchor gets the same score (the
    prior bias) and either all 500+ anchors or none pass the score threshold. To get a detector
    that behaves like one (a few boxes per image, scores that depend on the image), the BN
    statistics are calibrated on random images (random weights stay random) and the head's
    objectness/class convs get a wider random init and a negative objectness bias. The saved
    checkpoint file makes the fingerprint stable across processes (cache keys).
    """
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    from detection.detector import load_detector
    from detection.mmdet_utils import resolve_base_config

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = out_dir / "yolox_tiny_small.py"
    cfg.write_text(
        f"_base_ = {str(resolve_base_config('yolox_tiny_8xb8-300e_coco'))!r}\n"
        "test_pipeline = [\n"
        "    dict(type='LoadImageFromFile', backend_args=None),\n"
        f"    dict(type='Resize', scale=({scale}, {scale}), keep_ratio=True),\n"
        f"    dict(type='Pad', size=({scale}, {scale}), pad_val=dict(img=(114.0, 114.0, 114.0))),\n"
        "    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),\n"
        "]\n"
        "test_dataloader = dict(dataset=dict(pipeline=test_pipeline))\n"
        "val_dataloader = dict(dataset=dict(pipeline=test_pipeline))\n"
        f"model = dict(bbox_head=dict(num_classes={len(classes)}),\n"
        "             test_cfg=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.65)))\n")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    det = load_detector(cfg, None, "cpu", classes=classes)
    model = det.model
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model.bbox_head(model.extract_feat(torch.rand(16, 3, scale, scale, generator=gen) * 255))
        for convs, std, bias in ((model.bbox_head.multi_level_conv_obj, 0.3, -4.0),
                                 (model.bbox_head.multi_level_conv_cls, 0.1, 2.0)):
            for conv in convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
                conv.bias.fill_(bias)
    model.eval()
    ckpt = out_dir / "tiny_random.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": list(classes)}}}, ckpt)
    return cfg, ckpt


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def prepare_dataset(root: Path, n: int, seed: int = 0) -> dict:
    """Generate ``n`` tiny synthetic pairs, index them, register their homography.

    Returns paths: ``root``, ``index`` (index JSON), ``rgb_coco`` (the index's RGB images COCO
    file: absolute file names, shared image ids, ``pair_id``), ``registry`` (registry folder).
    """
    from data.adapters.folder import build_index
    from data.index import load_index
    from data.synthetic import generate
    from registration.registry import HomographyEntry, save_entry

    registry = root / "registry"
    done = root / "index" / "synthetic.json"
    if done.is_file() and (registry / "synthetic.yaml").is_file() and len(load_index(done).pairs) == n:
        idx = load_index(done)  # prepared by an earlier run with the same --work: reuse (takes minutes)
        return {"root": root, "index": done, "rgb_coco": Path(idx.rgb_images), "registry": registry}
    info = generate(root / "data", n, seed=seed, rgb_size=RGB_SIZE, thermal_size=THERMAL_SIZE, progress=False)
    save_entry(registry, "synthetic", HomographyEntry(H=info.homography, rgb_size=info.rgb_size,
                                                      thermal_size=info.thermal_size, method="synthetic_known",
                                                      error_px=0.0, notes="benchmark"))
    idx = build_index(root / "data", "synthetic", root / "index", progress=False)
    return {"root": root, "index": Path(idx.path), "rgb_coco": Path(idx.rgb_images), "registry": registry}


def coco_subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` images of COCO file ``src`` (and their annotations) as ``dst``."""
    from core.coco import load_dataset, new_dataset, save_dataset

    ds = load_dataset(src)
    images = ds["images"][:n]
    ids = {im["id"] for im in images}
    save_dataset(dst, new_dataset(images, [a for a in ds["annotations"] if a["image_id"] in ids], ds["categories"]))
    return dst


def bench_inference(work: Path, data: dict, cfg: Path, ckpt: Path, n: int, reps: int, batch_size: int) -> dict:
    """Stage ``infer`` (cold cache) vs naive ``inference_detector`` loop vs bare ``model.predict``.

    The three are interleaved within each repetition (stage, naive, bare, stage, ...) so that a
    machine shared with other jobs loads them alike; the ratios are of the medians.
    """
    import cv2
    import torch
    from mmcv.transforms import Compose
    from mmdet.apis import inference_detector, init_detector

    from core.coco import load_dataset
    from detection.detector import load_detector, test_pipeline_cfg
    from tasks.infer import InferParams, run_infer
    from detection.mmdet_utils import register_mmdet

    coco = coco_subset(data["rgb_coco"], work / f"infer_{n}.json", n)
    paths = [im["file_name"] for im in load_dataset(coco)["images"]]
    params = InferParams(config=str(cfg), checkpoint=str(ckpt), device="cpu", batch_size=batch_size)
    run_infer(coco, work / "warm.json", params, cache_dir=work / "cache_warm")  # imports, lazy inits
    t0 = time.perf_counter()
    det = load_detector(cfg, ckpt, "cpu")
    t_load = time.perf_counter() - t0

    register_mmdet()
    model = init_detector(str(cfg), str(ckpt), device="cpu")
    inference_detector(model, paths[0])

    pipeline = Compose(test_pipeline_cfg(det.cfg))
    batches = []
    for s in range(0, n, batch_size):
        packed = [pipeline(dict(img=cv2.imread(p), img_id=i)) for i, p in enumerate(paths[s:s + batch_size])]
        with torch.no_grad():
            batches.append(det.model.data_preprocessor(dict(inputs=[x["inputs"] for x in packed],
                                                            data_samples=[x["data_samples"] for x in packed]), False))

    t_stage, t_naive, t_bare = [], [], []
    for r in range(reps):
        cache = work / f"cache_stage_{time.time_ns()}"
        t0 = time.perf_counter()
        rep = run_infer(coco, work / f"stage_{r}.json", params, cache_dir=cache, detector=det)
        t_stage.append(time.perf_counter() - t0)
        assert rep.cache_misses == n
        t0 = time.perf_counter()
        for p in paths:
            inference_detector(model, p)
        t_naive.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                det.model.predict(b["inputs"], b["data_samples"], rescale=True)
        t_bare.append(time.perf_counter() - t0)
    stage, naive, bare = _median(t_stage), _median(t_naive), _median(t_bare)
    return {"n": n, "batch_size": batch_size, "reps": reps, "load_s": t_load, "detections": rep.counts["detections"],
            "stage_s": stage, "naive_s": naive, "bare_s": bare,
            "stage_img_s": n / stage, "naive_img_s": n / naive, "bare_img_s": n / bare,
            "speedup_vs_naive": naive / stage, "overhead_vs_bare": stage / bare,
            "all_s": {"stage": t_stage, "naive": t_naive, "bare": t_bare}}


def bench_warp(work: Path, data: dict, n_boxes: int, reps: int) -> dict:
    """``warp_boxes`` on ``n_boxes`` random boxes, and the ``warp`` stage on a generated pseudo file."""
    import numpy as np

    from registration.registry import lookup
    from registration.warp import warp_boxes
    from core.coco import annotation, load_dataset, new_dataset, save_dataset
    from tasks.warp import WarpParams, run_warp

    e = lookup(data["registry"], "synthetic", RGB_SIZE)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1, (n_boxes, 2)) * np.array(RGB_SIZE)
    wh = rng.uniform(4, 60, (n_boxes, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    warp_boxes(boxes[:1000], e.H, THERMAL_SIZE)
    t_raw = []
    for _ in range(reps):
        t0 = time.perf_counter()
        warp_boxes(boxes, e.H, THERMAL_SIZE)
        t_raw.append(time.perf_counter() - t0)

    ds = load_dataset(data["rgb_coco"])
    per_image = 10
    anns = []
    for im in ds["images"]:
        for k in range(per_image):
            b = boxes[(len(anns)) % n_boxes]
            anns.append(annotation(len(anns) + 1, im["id"], 1 + k % 2, b, score=0.9, source="rgb_teacher"))
    pseudo = work / "warp_in.json"
    save_dataset(pseudo, new_dataset(ds["images"], anns, ds["categories"]))
    t_stage = []
    for r in range(reps):
        t0 = time.perf_counter()
        rep = run_warp(pseudo, work / f"warp_out_{r}.json", WarpParams(registry_dir=data["registry"]), index=data["index"])
        t_stage.append(time.perf_counter() - t0)
    raw, stage = _median(t_raw), _median(t_stage)
    return {"n_boxes": n_boxes, "raw_s": raw, "raw_boxes_s": n_boxes / raw, "stage_images": len(ds["images"]),
            "stage_boxes": len(anns), "stage_s": stage, "stage_boxes_s": len(anns) / stage,
            "stage_kept": rep.counts["boxes_out"], "stage_dropped": rep.dropped}


def bench_incremental(work: Path, cfg: Path, ckpt: Path, n: int, n_new: int, batch_size: int) -> dict:
    """Infer ``n`` images (cold cache), add ``n_new`` frames, re-run: both runs timed whole.

    Done twice: as the CLI/DVC stage runs (each call loads the detector itself), and as a
    long-running flow runs it (detector loaded once and passed in).
    """
    from data.synthetic import generate
    from detection.detector import load_detector
    from tasks.infer import InferParams, run_infer

    run = work / f"incr_{time.time_ns()}"  # fresh images and caches on every run
    root = run / "data"
    generate(root, n, seed=11, rgb_size=RGB_SIZE, thermal_size=THERMAL_SIZE, progress=False)
    coco = root / "labels_rgb" / "coco.json"
    params = InferParams(config=str(cfg), checkpoint=str(ckpt), device="cpu", batch_size=batch_size)
    t0 = time.perf_counter()
    first = run_infer(coco, run / "incr_1.json", params, cache_dir=run / "cache", image_root=root / "rgb")
    t_first = time.perf_counter() - t0
    generate(root, n_new, seed=11, rgb_size=RGB_SIZE, thermal_size=THERMAL_SIZE, start_index=n, progress=False)
    t0 = time.perf_counter()
    second = run_infer(coco, run / "incr_2.json", params, cache_dir=run / "cache", image_root=root / "rgb")
    t_second = time.perf_counter() - t0
    det = load_detector(cfg, ckpt, "cpu")
    t0 = time.perf_counter()
    f_first = run_infer(coco, run / "incr_3.json", params, cache_dir=run / "cache_flow", image_root=root / "rgb",
                        detector=det)
    tf_first = time.perf_counter() - t0
    generate(root, n_new, seed=11, rgb_size=RGB_SIZE, thermal_size=THERMAL_SIZE, start_index=n + n_new, progress=False)
    t0 = time.perf_counter()
    f_second = run_infer(coco, run / "incr_4.json", params, cache_dir=run / "cache_flow", image_root=root / "rgb",
                         detector=det)
    tf_second = time.perf_counter() - t0
    return {"n": n, "n_new": n_new, "first_s": t_first, "rerun_s": t_second, "ratio": t_second / t_first,
            "first_misses": first.cache_misses, "rerun_misses": second.cache_misses, "rerun_hits": second.cache_hits,
            "flow_first_s": tf_first, "flow_rerun_s": tf_second, "flow_ratio": tf_second / tf_first,
            "flow_first_misses": f_first.cache_misses, "flow_rerun_misses": f_second.cache_misses}


def _child_pipeline(work: Path, coco: Path, index: Path, registry: Path, cfg: Path, ckpt: Path,
                    batch_size: int, threads: int) -> dict:
    """infer -> pseudo -> warp on ``coco`` in THIS process; returns peak RSS and counts."""
    import resource

    import torch

    torch.set_num_threads(threads)

    from tasks.infer import InferParams, run_infer
    from tasks.pseudo import PseudoParams, run_pseudo
    from tasks.warp import WarpParams, run_warp

    t0 = time.perf_counter()
    params = InferParams(config=str(cfg), checkpoint=str(ckpt), device="cpu", batch_size=batch_size, max_per_image=3)
    r_inf = run_infer(coco, work / "infer.json", params, cache_dir=work / "cache")
    r_ps = run_pseudo(work / "infer.json", work / "pseudo.json",
                      PseudoParams(score_threshold=0.0, vehicles_as_car=True, histogram=False))
    r_wp = run_warp(work / "pseudo.json", work / "warp.json", WarpParams(registry_dir=registry), index=index)
    # C2's refine stage plugs in here: run_refine(work / "warp.json", work / "refine.json", RefineParams(...))
    # so that the peak RSS below covers inference + warp + refine.
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images": r_inf.counts["images_out"], "detections": r_inf.counts["detections"],
            "pseudo": r_ps.counts["boxes_out"], "warped": r_wp.counts["boxes_out"],
            "peak_rss_mib": peak_kib / 1024, "seconds": time.perf_counter() - t0}


def bench_rss(work: Path, data: dict, cfg: Path, ckpt: Path, sizes: list[int], batch_size: int,
              threads: int) -> list[dict]:
    """Peak RSS of infer+pseudo+warp for each size, each in a fresh Python process."""
    rows = []
    for n in sizes:
        sub = work / f"rss_{n}"
        sub.mkdir(parents=True, exist_ok=True)
        coco = coco_subset(data["rgb_coco"], sub / "in.json", n)
        cmd = [sys.executable, "-m", "benchmarks.label_transfer_infer", "--child", str(sub), str(coco), str(data["index"]),
               str(data["registry"]), str(cfg), str(ckpt), str(batch_size), str(threads)]
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"child for n={n} failed:\n{res.stderr[-3000:]}")
        rows.append({"n": n, **json.loads(res.stdout.strip().splitlines()[-1])})
    return rows


def write_results(res: dict, quick: bool) -> Path:
    from core import atomic

    inf, wp, inc, rss = res["inference"], res["warp"], res["incremental"], res["rss"]
    lines = [
        "## Label transfer: inference, warp, incremental, memory (`benchmarks/label_transfer_infer.py`)",
        "",
        f"{'QUICK SMOKE RUN (sizes shrunk; not the goal sizes). ' if quick else ''}"
        f"Generated pairs (RGB {RGB_SIZE[0]}x{RGB_SIZE[1]}, thermal {THERMAL_SIZE[0]}x{THERMAL_SIZE[1]}), "
        f"mmdet YOLOX-tiny with random weights (BN statistics calibrated, head re-scaled so it emits a few boxes per image), 128 px test pipeline, "
        f"CPU, {os.cpu_count()} cores (shared with other jobs), torch threads {res['torch_threads']}. Medians of {inf['reps']} "
        f"runs; each part measured in one process run ("
        + ", ".join(f"{k}: {v}" for k, v in res.get("measured", {}).items()) + ").",
        "",
        "| measurement | value | goal | met |",
        "|---|---|---|---|",
        f"| `infer` stage, {inf['n']} images ({inf['detections']} detections), batch {inf['batch_size']}, cold cache "
        f"(read+hash+decode+test pipeline+infer+cache+COCO), detector already loaded "
        f"| {inf['stage_s']:.2f} s ({inf['stage_img_s']:.0f} img/s) | | |",
        f"| loading the detector (`load_detector`: config, build, checkpoint, fingerprint), once per process "
        f"| {inf['load_s']:.2f} s | | |",
        f"| naive per-image `inference_detector` loop, same images | {inf['naive_s']:.2f} s ({inf['naive_img_s']:.0f} img/s) | | |",
        f"| bare `model.predict` on pre-processed batches of {inf['batch_size']} | {inf['bare_s']:.2f} s "
        f"({inf['bare_img_s']:.0f} img/s) | | |",
        f"| speed-up of the stage vs naive loop | {inf['speedup_vs_naive']:.2f}x | >= 2x | "
        f"{'yes' if inf['speedup_vs_naive'] >= 2 else 'NO'} |",
        f"| stage time / bare forward time | {inf['overhead_vs_bare']:.2f}x | <= 1.5x | "
        f"{'yes' if inf['overhead_vs_bare'] <= 1.5 else 'NO'} |",
        f"| `registration.warp.warp_boxes`, {wp['n_boxes']:,} boxes | {wp['raw_boxes_s'] / 1e6:.2f} M boxes/s | >= 1M/s | "
        f"{'yes' if wp['raw_boxes_s'] >= 1e6 else 'NO'} |",
        f"| `warp` stage end to end ({wp['stage_images']} images x 10 boxes, JSON in/out, index+registry) "
        f"| {wp['stage_boxes_s'] / 1e3:.0f} k boxes/s ({wp['stage_s']:.2f} s) | (for information) | |",
        f"| incremental: first run {inc['n']} images | {inc['first_s']:.2f} s ({inc['first_misses']} inferred) | | |",
        f"| incremental: +{inc['n_new']} images, re-run | {inc['rerun_s']:.2f} s ({inc['rerun_misses']} inferred, "
        f"{inc['rerun_hits']} cache hits) | | |",
        f"| re-run / first run (CLI/DVC path: each run loads the detector) | {100 * inc['ratio']:.1f} % | <= 5 % | "
        f"{'yes' if inc['ratio'] <= 0.05 else 'NO'} |",
        f"| same in a flow (detector loaded once, passed in): first {inc['n'] + inc['n_new']} images "
        f"{inc['flow_first_s']:.2f} s, +{inc['n_new']} re-run {inc['flow_rerun_s']:.2f} s "
        f"({inc['flow_rerun_misses']} inferred) | {100 * inc['flow_ratio']:.1f} % | <= 5 % | "
        f"{'yes' if inc['flow_ratio'] <= 0.05 else 'NO'} |",
    ]
    for r in rss:
        lines.append(f"| peak RSS, infer+pseudo+warp, {r['n']} images (fresh process; {r['detections']} detections, "
                     f"{r['warped']} warped boxes, {r['seconds']:.0f} s) | {r['peak_rss_mib']:.0f} MiB | | |")
    if len(rss) >= 2:
        ratio = rss[-1]["peak_rss_mib"] / rss[0]["peak_rss_mib"]
        lines.append(f"| peak RSS {rss[-1]['n']} / {rss[0]['n']} images | {ratio:.3f} | within +-10 % | "
                     f"{'yes' if abs(ratio - 1) <= 0.10 else 'NO'} |")
    lines += [
        "",
        "Notes: the stage's time includes everything a user waits for (reading and hashing each file, decoding, "
        "the config's test pipeline, batched forward, cache writes, the COCO file and report); the naive loop "
        "(`init_detector` + one `inference_detector(model, path)` per image) re-builds the test pipeline per call and runs "
        "batch 1; both use the same model and checkpoint, and neither timing includes loading the model. `bare` = only `model.predict` (backbone, neck, head, box decoding and NMS) on batches already "
        "resized, padded and stacked by the data preprocessor. The incremental re-run includes loading the "
        "detector (config build + checkpoint hash), hashing every image and reading every cache entry. "
        "Peak RSS is `ru_maxrss` of a fresh process running the three stages (`max_per_image=3` detections kept "
        "per image so the COCO annotations, which are held in memory by design, stay small); the refine stage "
        "(engineer C2) plugs into `_child_pipeline`, marked there, and is not included in these numbers. "
        "Why the incremental re-run misses 5 %: it infers only the new images, but it must still hash every image, read "
        "every cache entry and write the whole output COCO file again; with this random detector's ~60 stored "
        "detections per image (min_score 0.05) that output work is O(all detections) and costs ~1.5-2 ms per image "
        "against ~17 ms of inference per image at 128 px on one CPU thread. Larger images or models make inference "
        "costlier while this work stays the same, so the ratio would fall (not measured here).",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_text(RESULTS, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (numbers are not the goals')")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for every measurement (default 1: on a shared 2-core machine 1 thread "
                         "was faster and steadier than 2)")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS),
                    help="measure only these parts; the others are taken from the last run's results.json in --work "
                         "(default: all)")
    ap.add_argument("--child", nargs=8, metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        work, coco, index, registry, cfg, ckpt, bs, th = args.child
        print(json.dumps(_child_pipeline(Path(work), Path(coco), Path(index), Path(registry), Path(cfg), Path(ckpt),
                                         int(bs), int(th))))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    q = args.quick
    sizes = dict(n_data=200 if q else 10_000, n_infer=32 if q else 256, reps=1 if q else 3, n_boxes=100_000 if q else 1_000_000,
                 n_incr=40 if q else 1_000, rss=[50, 200] if q else [1_000, 10_000], batch=32)
    with tempfile.TemporaryDirectory(prefix="r2t-bench-infer-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        cfg, ckpt = make_tiny_detector(work / "det")
        data = prepare_dataset(work / "ds", sizes["n_data"])
        print(f"prepared {sizes['n_data']} pairs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        saved = work / "results.json"
        res = json.loads(saved.read_text()) if saved.is_file() and set(args.parts) != set(PARTS) else {}
        res.update({"torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        runs = {"inference": lambda: bench_inference(work, data, cfg, ckpt, sizes["n_infer"], sizes["reps"], sizes["batch"]),
                "warp": lambda: bench_warp(work, data, sizes["n_boxes"], max(sizes["reps"], 3)),
                "incremental": lambda: bench_incremental(work, cfg, ckpt, sizes["n_incr"], 10, sizes["batch"]),
                "rss": lambda: bench_rss(work, data, cfg, ckpt, sizes["rss"], sizes["batch"], args.threads)}
        for part in PARTS:
            if part in args.parts:
                res[part] = runs[part]()
                res.setdefault("measured", {})[part] = res["date"]
                print(json.dumps(res[part]), file=sys.stderr)
                saved.write_text(json.dumps(res, indent=1))
        path = write_results(res, q)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
