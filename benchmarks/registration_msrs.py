"""Registration quality on real pairs with a known synthetic homography, and box-warp/generator speed.

Setup (``../shared/data/msrs-aligned-20``: 20 real pixel-aligned RGB/thermal pairs with boxes
annotated separately per modality): the RGB side is re-projected as a wider-FOV RGB camera
would see it (the original image lands on a tilted, scaled quad inside an 800x640 frame), so
the true RGB->thermal homography ``H_true = G^-1`` is known exactly. Then:

1. estimation from clicked correspondences (simulated: random thermal points, their true RGB
   positions, Gaussian click noise on both) -> mean reprojection error on *held-out* clicks and
   the mean map error against ``H_true`` over the thermal image;
2. the re-projected RGB labels are warped back with the estimate and matched (IoU >= 0.5, same
   class, greedy) to the thermal labels: mean IoU of matched boxes vs the original aligned
   pair's RGB labels against the same thermal labels;
3. automatic estimation measured against ``H_true``: the old per-pair ECC pooled over the 20
   pairs (``estimate_auto``) and the robust one (``registration.robust.estimate_robust``);
4. **many rigs** (``../shared/data/msrs-bench``, day and night): ``--rigs`` random plausible
   homographies (per-axis scale 0.8-1.3, rotation +-5 deg, shear +-0.03, translation +-15 % of the
   frame, perspective up to 5e-5); each is estimated automatically on 8 pairs (4 day, 4 night) and
   measured on 8 others (also with 16 estimation pairs; code in ``benchmarks/_registration_rigs.py``): map error against the true matrix, whether ``register check``'s rule
   (``assess_entry``, 3 px) refuses it, and the mean IoU of thermal GT vs RGB GT warped with the
   estimate against the same with the true matrix;
5. speed: ``warp_boxes`` (numpy) and ``warp_boxes_torch`` boxes/s, synthetic pairs/s.

Run: ``python -m benchmarks.registration_msrs`` (writes ``benchmarks/results/registration_msrs.md``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MSRS20 = REPO.parent / "shared" / "data" / "msrs-aligned-20"
MSRS_BENCH = REPO.parent / "shared" / "data" / "msrs-bench"
WIDE_SIZE = (800, 640)
#: Where the original (= thermal) image corners land in the wide RGB frame (tl, tr, br, bl).
WIDE_QUAD = np.array([[70.0, 52.0], [762.0, 66.0], [750.0, 590.0], [58.0, 578.0]])


def wide_rgb_homography(size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """``G``: original RGB/thermal pixel -> wide RGB pixel (continuous coordinates)."""
    import cv2

    w, h = size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    G = cv2.getPerspectiveTransform(src, WIDE_QUAD.astype(np.float32)).astype(np.float64)
    return G / G[2, 2]


def match_iou(pred: np.ndarray, pred_cls: np.ndarray, gt: np.ndarray, gt_cls: np.ndarray, thr: float = 0.5) -> list[float]:
    """Greedy same-class matching at IoU >= thr; returns the IoUs of matched pairs."""
    from core.boxes import iou_matrix

    out: list[float] = []
    for c in np.unique(np.concatenate([pred_cls, gt_cls])):
        p, g = pred[pred_cls == c], gt[gt_cls == c]
        if not len(p) or not len(g):
            continue
        m = iou_matrix(p, g)
        while True:
            i, j = np.unravel_index(np.argmax(m), m.shape)
            if m[i, j] < thr:
                break
            out.append(float(m[i, j]))
            m[i, :] = -1
            m[:, j] = -1
    return out


def load_msrs(root: Path, tmp: Path):
    from data.adapters.folder import build_index

    ix = build_index(root, "msrs", tmp, progress=False)
    return ix, ix.load_labels("rgb"), ix.load_labels("thermal")


def run_registration(root: Path = MSRS20, *, n_clicks: int = 16, click_sigma: float = 0.3, seed: int = 0,
                     auto: bool = True) -> dict:
    import cv2

    from registration.homography import estimate_auto, estimate_from_points, grid_error, initial_guess, project_points
    from registration.warp import warp_boxes, warp_image
    from core.coco import boxes_by_image

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as td:
        ix, rgb_ds, th_ds = load_msrs(root, Path(td))
    size = ix.pairs[0].thermal_size
    G = wide_rgb_homography(size)
    H_true = np.linalg.inv(G)
    H_true /= H_true[2, 2]
    # simulated clicks: thermal points spread over the image, true RGB positions, click noise on both
    pt = rng.uniform([0, 0], size, size=(n_clicks, 2))
    pr = project_points(G, pt) + rng.normal(0, click_sigma, (n_clicks, 2))
    pt_noisy = pt + rng.normal(0, click_sigma, (n_clicks, 2))
    est = estimate_from_points(pr, pt_noisy, rgb_size=WIDE_SIZE, thermal_size=size, holdout_fraction=0.25, seed=seed)
    res: dict = {"n_clicks": n_clicks, "click_sigma_px": click_sigma, "points_holdout_error_px": est.holdout_error_px,
                 "points_fit_error_px": est.fit_error_px, "points_map_error_px": grid_error(est.H, H_true, WIDE_SIZE, size)}
    rb, tb = boxes_by_image(rgb_ds), boxes_by_image(th_ds)
    iou_orig, iou_est, iou_true, iou_mid = [], [], [], []
    lost = {"est": 0, "true": 0, "est_midpoints": 0}
    for p in ix.pairs:
        r, t = rb[p.image_id], tb[p.image_id]
        iou_orig += match_iou(r.boxes, r.category_ids, t.boxes, t.category_ids)
        wide = warp_boxes(r.boxes, G, WIDE_SIZE)  # labels as the wide RGB camera sees them
        cls = r.category_ids[wide.keep]
        wide_mid = warp_boxes(r.boxes, G, WIDE_SIZE, mode="midpoints")
        back = warp_boxes(wide_mid.boxes, est.H, size, mode="midpoints")
        lost["est_midpoints"] += len(r.boxes) - len(back.keep)
        iou_mid += match_iou(back.boxes, r.category_ids[wide_mid.keep][back.keep], t.boxes, t.category_ids)
        for key, H, acc in (("est", est.H, iou_est), ("true", H_true, iou_true)):
            back = warp_boxes(wide.boxes, H, size)
            lost[key] += len(r.boxes) - len(back.keep)
            acc += match_iou(back.boxes, cls[back.keep], t.boxes, t.category_ids)
    res.update({"matched_orig": len(iou_orig), "mean_iou_orig": float(np.mean(iou_orig)),
                "matched_est": len(iou_est), "mean_iou_est": float(np.mean(iou_est)),
                "matched_true": len(iou_true), "mean_iou_true": float(np.mean(iou_true)),
                "matched_est_midpoints": len(iou_mid), "mean_iou_est_midpoints": float(np.mean(iou_mid)),
                "boxes_lost": lost})
    if auto:
        pairs = []
        for p in ix.pairs:
            rgb = cv2.imread(p.rgb_path, cv2.IMREAD_COLOR)
            pairs.append((warp_image(rgb, G, WIDE_SIZE), cv2.imread(p.thermal_path, cv2.IMREAD_GRAYSCALE)))
        t0 = time.perf_counter()
        a = estimate_auto(pairs, progress=False)
        res.update({"auto_seconds": time.perf_counter() - t0, "auto_pairs_used": a.n_inliers, "auto_pairs": len(pairs),
                    "auto_map_error_px": grid_error(a.H, H_true, WIDE_SIZE, size),
                    "auto_init_map_error_px": grid_error(initial_guess(WIDE_SIZE, size), H_true, WIDE_SIZE, size),
                    "auto_per_pair_spread_px": a.fit_error_px, "auto_per_pair": a.per_pair})
        from registration.robust import estimate_robust

        t0 = time.perf_counter()
        b = estimate_robust(pairs)
        res.update({"robust_seconds": time.perf_counter() - t0, "robust_pairs_used": b.n_inliers,
                    "robust_map_error_px": grid_error(b.H, H_true, WIDE_SIZE, size),
                    "robust_heldout_error_px": b.holdout_error_px})
    return res


def run_speed(n_boxes: int = 1_000_000, repeats: int = 5, n_pairs: int = 200) -> dict:
    import torch

    from data.synthetic import default_homography, generate
    from registration.warp import warp_boxes, warp_boxes_torch

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (n_boxes, 2))
    wh = rng.uniform(2, 80, (n_boxes, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    H = default_homography()
    t_np, t_th = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        warp_boxes(boxes, H, (256, 208))
        t_np.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        warp_boxes_torch(torch.as_tensor(boxes), H, (256, 208))
        t_th.append(time.perf_counter() - t0)
    # generator cost breakdown (CPU seconds of this process: robust to other load on the machine)
    import cv2

    from data.synthetic import _PNG_PARAMS
    from data.synthetic_render import Renderer

    r = Renderer(0, (320, 256), (256, 208), H, 0.5, ("person", "car"), (1, 5))
    c0 = time.process_time()
    frames = [r.render(i) for i in range(n_pairs)]
    render_cpu = time.process_time() - c0
    png = [getattr(cv2, v) if isinstance(v, str) else v for v in _PNG_PARAMS]
    c0 = time.process_time()
    for f in frames:
        cv2.imencode(".png", f[0], png)
        cv2.imencode(".png", f[1], png)
    encode_cpu = time.process_time() - c0
    gen = []
    with tempfile.TemporaryDirectory() as td:
        for k in range(3):
            c0, w0 = time.process_time(), time.perf_counter()
            generate(Path(td) / f"s{k}", n_pairs, seed=k, progress=False)
            gen.append((time.process_time() - c0, time.perf_counter() - w0))
    return {"n_boxes": n_boxes, "numpy_boxes_per_s": n_boxes / statistics.median(t_np),
            "torch_cpu_boxes_per_s": n_boxes / statistics.median(t_th), "torch_threads": torch.get_num_threads(),
            "gen_pairs": n_pairs, "gen_pairs_per_cpu_s": n_pairs / statistics.median(g[0] for g in gen),
            "render_ms_per_pair_cpu": render_cpu / n_pairs * 1000, "png_encode_ms_per_pair_cpu": encode_cpu / n_pairs * 1000,
            "gen_pairs_per_wall_s": n_pairs / statistics.median(g[1] for g in gen)}


def to_markdown(reg: dict, speed: dict) -> str:
    r, s = reg, speed
    lines = ["## Registration on msrs-aligned-20 with a known synthetic homography (`benchmarks/registration_msrs.py`)", "",
             f"RGB side re-projected into an {WIDE_SIZE[0]}x{WIDE_SIZE[1]} wider-FOV frame (scale ~1.1, mild perspective); "
             "true RGB->thermal H known.", "",
             "| measurement | value |", "|---|---|",
             f"| points: {r['n_clicks']} simulated clicks (noise sigma {r['click_sigma_px']} px), 25% held out: mean "
             f"reprojection error on held-out clicks | {r['points_holdout_error_px']:.3f} px |",
             f"| points: mean map error vs true H over the thermal image | {r['points_map_error_px']:.3f} px |",
             f"| mean IoU of matched boxes, original aligned RGB labels vs thermal labels | {r['mean_iou_orig']:.4f} "
             f"({r['matched_orig']} matched) |",
             f"| mean IoU, wide-RGB labels warped with the ESTIMATED H vs thermal labels | {r['mean_iou_est']:.4f} "
             f"({r['matched_est']} matched) |",
             f"| mean IoU, same with the TRUE H | {r['mean_iou_true']:.4f} ({r['matched_true']} matched) |",
             f"| mean IoU, estimated H, both warps with `mode=\"midpoints\"` | {r['mean_iou_est_midpoints']:.4f} "
             f"({r['matched_est_midpoints']} matched) |"]
    if "auto_map_error_px" in r:
        lines += [f"| automatic (ECC on gradients, {r['auto_pairs_used']}/{r['auto_pairs']} pairs pooled): mean map "
                  f"error vs true H | {r['auto_map_error_px']:.2f} px (start: {r['auto_init_map_error_px']:.1f} px), "
                  f"{r['auto_seconds']:.1f} s |",
                  f"| automatic: per-pair spread around the pooled estimate (median) | {r['auto_per_pair_spread_px']:.2f} px |",
                  f"| automatic, robust (`estimate_robust`: search + joint refinement, {r['robust_pairs_used']}/"
                  f"{r['auto_pairs']} pairs): mean map error vs true H | {r['robust_map_error_px']:.2f} px, held-out "
                  f"error {r['robust_heldout_error_px']:.2f} px, {r['robust_seconds']:.0f} s |"]
    lines += ["", "## Box warp and synthetic generator speed", "", "| measurement | value |", "|---|---|",
              f"| `warp_boxes` numpy, {s['n_boxes']:,} boxes, median of 5 | {s['numpy_boxes_per_s'] / 1e6:.2f} M boxes/s |",
              f"| `warp_boxes_torch` CPU ({s['torch_threads']} threads), same | {s['torch_cpu_boxes_per_s'] / 1e6:.2f} M boxes/s |",
              f"| synthetic generator, {s['gen_pairs']} pairs 320x256 + 256x208 PNG, median of 3 | "
              f"{s['gen_pairs_per_cpu_s']:.0f} pairs per CPU-second, {s['gen_pairs_per_wall_s']:.0f} pairs/s wall |",
              f"| generator breakdown per pair (CPU): render / PNG encode of both images | "
              f"{s['render_ms_per_pair_cpu']:.2f} ms / {s['png_encode_ms_per_pair_cpu']:.2f} ms |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from core import atomic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=MSRS20, help="msrs-aligned-20 folder")
    ap.add_argument("--no-auto", action="store_true", help="skip automatic estimation")
    ap.add_argument("--bench-root", type=Path, default=MSRS_BENCH, help="msrs-bench folder (many-rigs study)")
    ap.add_argument("--rigs", type=int, default=24, help="random rigs in the many-rigs study (0: skip it)")
    ap.add_argument("--est-pairs", type=int, nargs="+", default=[8, 16],
                    help="pairs per estimate in the many-rigs study, one table each (default 8 16)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "registration_msrs.md")
    args = ap.parse_args(argv)
    from benchmarks._registration_rigs import rigs_markdown, run_aligned, run_rigs

    rigs = run_rigs(args.bench_root, args.rigs, n_est=args.est_pairs[0]) if args.rigs else None
    more = [run_rigs(args.bench_root, args.rigs, n_est=n) for n in args.est_pairs[1:]] if args.rigs else []
    if rigs:
        rigs["aligned"] = run_aligned(args.bench_root)
    reg = run_registration(args.root, auto=not args.no_auto)
    speed = run_speed()
    md = to_markdown(reg, speed) + ("\n" + rigs_markdown(rigs) if rigs else "") + "".join("\n" + rigs_markdown(m) for m in more)
    atomic.write_text(args.out, md)
    atomic.write_json(args.out.with_suffix(".json"), {"registration": reg, "speed": speed, "rigs": rigs, "rigs_more": more})
    print(md)
    print(json.dumps(reg.get("auto_per_pair", [])[:5], indent=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
