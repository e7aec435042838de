"""``rgb2thermal stage refine`` and ``rgb2thermal stage report`` (added to ``stage``'s group).

This module has no ``register``: ``rgb2thermal_cli.stage`` imports it (``STAGE_MODULES``) and
adds the entries of :data:`STAGES`. Heavy packages are imported inside the handlers only;
option defaults are :class:`tasks.refine.RefineParams`'s own.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rgb2thermal_cli.stage import (StageCommand, _d, add_compute_arguments, add_io_arguments, compute_from_args,
                                   params_where, print_report)
from tasks.refine import RefineParams


def _refine_args(p: argparse.ArgumentParser) -> None:
    add_io_arguments(p, inp_help="COCO labels on the thermal images (output of 'stage warp')",
                     out_help="COCO refined labels: same images and ids; every box records "
                              "refine={method, score, iou_to_prompt, decision, reason, prompt_bbox}.",
                     index="paired index JSON (optional): thermal image files are then taken from it by pair_id",
                     cache=False)
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="per-image cache folder (content-addressed; default: .cache/refine/ in --out's folder, "
                        "never the current folder)")
    p.add_argument("--method", choices=["auto", "sam2", "classical", "none"], default=_d(RefineParams, "method"),
                   help="auto (default): SAM2 when --sam2-checkpoint is given, otherwise the classical Otsu refiner "
                        "with a loud WARNING and a 'fallbacks' entry in the report; sam2: fail without a checkpoint; "
                        "classical: the Otsu refiner by choice; none: boxes pass through unchanged")
    p.add_argument("--sam2-config", default=_d(RefineParams, "sam2_config"),
                   help="SAM2 model config bundled with the sam2 package, matching the checkpoint "
                        "(default %(default)s; _s, _b+, _l for the larger models)")
    p.add_argument("--sam2-checkpoint", default=None, metavar="PT",
                   help="SAM2 checkpoint file (.pt), e.g. sam2.1_hiera_tiny.pt; only name files you trust")
    p.add_argument("--sam2-random-weights", action="store_true",
                   help="build SAM2 with random weights (smoke tests and timing only: boxes are meaningless; "
                        "recorded in the report)")
    p.add_argument("--device", default=_d(RefineParams, "device"), help="cpu or cuda[:N] for SAM2 (default %(default)s)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="minimum refiner score to replace a box: SAM2 predicted mask IoU (default 0.5) or, "
                        "for the classical refiner, Otsu separability in [0, 1] (default 0.3)")
    p.add_argument("--min-iou", type=float, default=_d(RefineParams, "min_iou"),
                   help="minimum IoU between the refined box and the input box to replace it; guards against a "
                        "mask that grabbed the road or a shadow (default %(default)s)")
    p.add_argument("--min-size", type=float, default=_d(RefineParams, "min_size"),
                   help="minimum width and height in pixels of a replacement box (default %(default)s)")
    p.add_argument("--on-reject", choices=["keep", "drop"], default=_d(RefineParams, "on_reject"),
                   help="what to do with a box that is not replaced: keep the input box (default) or drop it")
    p.add_argument("--image-batch-size", type=int, default=_d(RefineParams, "image_batch_size"),
                   help="thermal images encoded together by SAM2 (set_image_batch); 1 = one at a time (default)")
    p.add_argument("--max-boxes-per-call", type=int, default=_d(RefineParams, "max_boxes_per_call"),
                   help="boxes per SAM2 decoder call on one image (bounds mask memory; default %(default)s)")
    p.add_argument("--enlarge", type=float, default=_d(RefineParams, "classical_enlarge"),
                   help="classical refiner: factor by which the box is enlarged before segmenting (default %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the per-image cache")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder that relative 'file_name's are resolved against (default: the COCO file's folder)")
    add_compute_arguments(p)


def refine_cache_default(out: Path) -> Path:
    """``--cache-dir``'s default: ``.cache/refine`` beside the output file, so the cache follows the
    data it was made for and never depends on the folder the command was started in."""
    return Path(out).resolve().parent / ".cache" / "refine"


def _refine_run(args: argparse.Namespace) -> int:
    from tasks.refine import RefineParams, run_refine

    thresholds = {}
    if args.score_threshold is not None:
        thresholds = {"sam2_score_threshold": args.score_threshold, "classical_score_threshold": args.score_threshold}
    values = {"method": args.method, "sam2_config": args.sam2_config, "sam2_checkpoint": args.sam2_checkpoint,
              "sam2_random_weights": args.sam2_random_weights, "device": args.device, "min_iou": args.min_iou,
              "min_size": args.min_size, "on_reject": args.on_reject, "image_batch_size": args.image_batch_size,
              "max_boxes_per_call": args.max_boxes_per_call, "classical_enlarge": args.enlarge,
              "use_cache": not args.no_cache, "image_root": str(args.image_root) if args.image_root else None,
              **thresholds}
    params = RefineParams.validated(values, **params_where("refine"))
    cache_dir = args.cache_dir if args.cache_dir is not None else refine_cache_default(args.out)
    print_report(run_refine(args.inp, args.out, params, index=args.index, cache_dir=cache_dir,
                            compute=compute_from_args(args, "rgb2thermal stage refine")))
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--thermal-gt", type=Path, required=True, metavar="COCO_JSON",
                   help="thermal ground-truth COCO (e.g. an index's thermal label file); image ids as in the label files")
    p.add_argument("--rgb-gt", type=Path, default=None, metavar="COCO_JSON",
                   help="RGB ground-truth COCO, needed to score --pseudo")
    p.add_argument("--pseudo", type=Path, default=None, metavar="COCO_JSON",
                   help="RGB pseudo-labels (output of 'stage pseudo'), scored against --rgb-gt")
    p.add_argument("--warped", type=Path, default=None, metavar="COCO_JSON",
                   help="thermal labels after 'stage warp', scored against --thermal-gt")
    p.add_argument("--refined", type=Path, default=None, metavar="COCO_JSON",
                   help="thermal labels after 'stage refine', scored against --thermal-gt")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder: quality.md, quality.json, overlays/*.png; the stage report is written "
                        "beside it as <DIR>.report.json")
    p.add_argument("--index", type=Path, default=None, metavar="INDEX_JSON",
                   help="paired index JSON (optional): day/night per image by pair_id (default: the COCO images' "
                        "'daynight' key)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU for a label to match a ground-truth box (default 0.5)")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="classes to score (default: the label files' classes that the ground truth has)")
    p.add_argument("--overlays", type=int, default=4,
                   help="number of overlay PNGs (thermal images with the most errors; default 4, 0 = none)")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder that relative thermal 'file_name's are resolved against (default: the GT file's folder)")


def _report_run(args: argparse.Namespace) -> int:
    from tasks.report import ReportInputs, ReportParams, run_report

    inp = ReportInputs(thermal_gt=args.thermal_gt, rgb_gt=args.rgb_gt, pseudo=args.pseudo, warped=args.warped,
                       refined=args.refined)
    params = ReportParams(iou_threshold=args.iou, classes=tuple(args.classes) if args.classes else None,
                          n_overlays=args.overlays, image_root=str(args.image_root) if args.image_root else None)
    report = run_report(inp, args.out, params, index=args.index)
    print_report(report)
    print((Path(args.out) / "quality.md").read_text(encoding="utf-8"))
    return 0


STAGES: dict[str, StageCommand] = {
    "refine": StageCommand(
        _refine_args, _refine_run, "tighten thermal boxes with SAM2 (or the classical refiner), per-box policy",
        "Refine each box on its thermal image: SAM2 (one image embedding per image, all its boxes in one batched "
        "prompt call) or, without a SAM2 checkpoint, a classical Otsu refiner (announced loudly and recorded). "
        "A box is replaced by its mask's tight box when the score and the IoU with the input box are high enough, "
        "otherwise kept or dropped (--on-reject). Results are cached per image (image content + model + boxes), "
        "so changing --min-iou/--score-threshold/--on-reject re-runs no model."),
    "report": StageCommand(
        _report_args, _report_run, "pseudo-label quality per class and day/night (precision, recall, mean IoU)",
        "Score pseudo-labels against ground truth: RGB pseudo-labels vs RGB GT, warped and refined labels vs thermal "
        "GT, per class and day/night, one-to-one matching at --iou. Writes quality.md, quality.json and overlay PNGs "
        "(GT vs labels on the thermal image, misses and false positives marked)."),
}
