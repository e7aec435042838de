"""``rgb2thermal stage <name>``: run one label-transfer stage alone (COCO in, COCO out).

These are the commands DVC stages (``cmd: rgb2thermal stage infer ...``) and people call; the
Prefect flow calls the same ``tasks.<stage>.run_<stage>`` functions directly.

Registration pattern (so other modules can add stages without editing this file's logic):
a module lists its stages in ``STAGES: dict[str, StageCommand]`` and is named in
``STAGE_MODULES`` below. Such modules must NOT define ``register`` (``main.py`` would then add
them as a top-level command). ``stage_refine`` (refine, report) is one of them.

Heavy packages (torch, mmdet, cv2) are imported inside the ``run`` handlers only; the stages'
parameter classes are imported here, so that option defaults are theirs (:func:`_d`).
"""
from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

from core.stage_report import StageReport
from tasks.compute import ComputeParams
from tasks.infer import InferParams
from tasks.pseudo import PseudoParams
from tasks.warp import WarpParams

ORDER = 40

log = logging.getLogger(__name__)

STAGE_MODULES: tuple[str, ...] = ("rgb2thermal_cli.stage_refine",)


class StageCommand(NamedTuple):
    """One ``rgb2thermal stage <name>`` subcommand.

    ``add_arguments(parser)`` adds the stage's own options (``--in``/``--out``/``--index``/
    ``--cache-dir`` come from :func:`add_io_arguments`, call it yourself); ``run(args) -> int``
    is the handler (exit code); ``help`` is the one-line summary, ``description`` the long text.
    """

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str = ""


def _d(model: type[BaseModel], name: str) -> Any:
    """An option's default: the parameter class's own, so the CLI never restates (and drifts from) it."""
    return model.model_fields[name].get_default(call_default_factory=True)


def add_io_arguments(p: argparse.ArgumentParser, *, inp_help: str, out_help: str,
                     index: str | None = None, cache: bool = True,
                     cache_default: str = ".cache/rgb2thermal/<stage>/") -> None:
    """The options every stage shares. ``index``: None = no ``--index``; else its help text;
    ``cache_default``: where the stage puts its cache without ``--cache-dir`` (for the help)."""
    p.add_argument("--in", dest="inp", type=Path, required=True, metavar="COCO_JSON", help=inp_help)
    p.add_argument("--out", type=Path, required=True, metavar="COCO_JSON",
                   help=out_help + " The stage's JSON report is written beside it as <out>.report.json.")
    if index is not None:
        p.add_argument("--index", type=Path, default=None, metavar="INDEX_JSON", help=index)
    if cache:
        p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                       help=f"per-image cache folder (content-addressed; default {cache_default})")


def add_compute_arguments(p: argparse.ArgumentParser) -> None:
    """``--workers N`` / ``--dask-address ADDR`` / ``--chunk-size K``: where the frames are computed
    (:class:`tasks.compute.ComputeParams`; the output is the same bytes either way)."""
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="shard the frames over a local Dask cluster of N worker processes (each loads the model "
                        "once); default: in this process")
    p.add_argument("--dask-address", default=None, metavar="ADDR",
                   help="shard the frames over your own Dask cluster, e.g. tcp://host:8786 (`dask scheduler` + "
                        "`dask worker`, dask-jobqueue, Kubernetes); its workers must see the same paths")
    p.add_argument("--chunk-size", type=int, default=None, metavar="K",
                   help=f"frames per Dask task (default {_d(ComputeParams, 'chunk_size')})")


def compute_from_args(args: argparse.Namespace, where: str) -> ComputeParams:
    """The :class:`tasks.compute.ComputeParams` of :func:`add_compute_arguments`'s options."""
    values = {k: v for k, v in (("workers", args.workers), ("scheduler", args.dask_address),
                                ("chunk_size", args.chunk_size)) if v is not None}
    return ComputeParams.validated(values, where, fix="see --workers/--dask-address/--chunk-size in --help")


def print_report(report: StageReport) -> None:
    """One summary line per stage run (the full report is in <out>.report.json)."""
    counts = ", ".join(f"{k}={v}" for k, v in report.counts.items())
    dropped = ", ".join(f"{k}={v}" for k, v in report.dropped.items()) or "none"
    print(f"{report.stage}: {counts}; dropped: {dropped}; cache hits/misses {report.cache_hits}/{report.cache_misses}; "
          f"skipped images {len(report.skipped_images)}; {report.seconds:.1f} s")
    for fb in report.fallbacks:
        print(f"  FALLBACK: {fb}")
    for out in report.outputs.values():
        print(f"  wrote {out}")


def params_where(stage: str) -> dict[str, str]:
    """``where``/``fix`` for :meth:`core.stage_params.StageParams.validated`: a bad option value
    is an InputError (printed without a traceback, exit 2), never a pydantic traceback."""
    return {"where": f"rgb2thermal stage {stage}", "fix": f"see `rgb2thermal stage {stage} --help`"}


def _parse_kv_floats(items: list[str] | None, what: str) -> dict[str, float]:
    from core.errors import InputError

    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"{what} '{item}' is not NAME=NUMBER", "command line", "e.g. --threshold person=0.5") from None
    return out


def _parse_kv_str(items: list[str] | None, what: str) -> dict[str, str]:
    from core.errors import InputError

    out: dict[str, str] = {}
    for item in items or []:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise InputError(f"{what} '{item}' is not SOURCE=TARGET", "command line", "e.g. --map truck=car")
        out[src.strip()] = dst.strip()
    return out


# ---------------------------------------------------------------- infer
def _infer_args(p: argparse.ArgumentParser) -> None:
    add_io_arguments(p, inp_help="COCO file whose 'images' list the images to run on (an index's "
                                 "<name>.rgb_images.json or .thermal_images.json, or any COCO file); its annotations "
                                 "are ignored",
                     out_help="COCO output: same images, categories = the detector's classes, one annotation "
                              "per detection with 'score' and 'source'.",
                     cache_default="<folder of --out>/.cache/infer, never the current folder")
    p.add_argument("--config", required=True,
                   help="mmdet config file, or the name of a config bundled with mmdet (e.g. yolox_s_8xb8-300e_coco)")
    p.add_argument("--checkpoint", default=None,
                   help="detector weights (.pth) to load; only name files you trust (they are unpickled). "
                        "Omitted: random weights, for smoke tests only (recorded as such in the report)")
    p.add_argument("--device", default=_d(InferParams, "device"),
                   help="cpu, cuda, cuda:N or auto (CUDA when available; default %(default)s)")
    p.add_argument("--batch-size", type=int, default=_d(InferParams, "batch_size"),
                   help="images per forward pass (default %(default)s)")
    p.add_argument("--min-score", type=float, default=_d(InferParams, "min_score"),
                   help="detections below this score are not stored (default %(default)s). Keep it below every "
                        "threshold you may want in 'pseudo', so changing those never needs re-inference")
    p.add_argument("--max-per-image", type=int, default=_d(InferParams, "max_per_image"),
                   help="keep at most this many detections per image (default %(default)s)")
    p.add_argument("--source", choices=["rgb_teacher", "thermal_teacher"], default=_d(InferParams, "source"),
                   help="provenance tag written on every box: rgb_teacher (RGB images) or thermal_teacher "
                        "(the detector run directly on thermal frames)")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder that relative 'file_name's are resolved against (default: the COCO file's folder)")
    add_compute_arguments(p)


def _infer_run(args: argparse.Namespace) -> int:
    from tasks.infer import InferParams, run_infer

    params = InferParams.validated(
        {"config": args.config, "checkpoint": args.checkpoint, "device": args.device, "batch_size": args.batch_size,
         "min_score": args.min_score, "max_per_image": args.max_per_image, "source": args.source},
        **params_where("infer"))
    cache = args.cache_dir if args.cache_dir is not None else args.out.parent / ".cache" / "infer"
    print_report(run_infer(args.inp, args.out, params, cache_dir=cache, image_root=args.image_root,
                           compute=compute_from_args(args, "rgb2thermal stage infer")))
    return 0


# ---------------------------------------------------------------- pseudo
def _pseudo_args(p: argparse.ArgumentParser) -> None:
    add_io_arguments(p, inp_help="COCO output of 'stage infer' (detections with scores, detector classes)",
                     out_help="COCO pseudo-labels: categories = the target classes (1-based, in --classes order).",
                     cache=False)
    p.add_argument("--classes", nargs="+", default=list(_d(PseudoParams, "target_classes")), metavar="NAME",
                   help="target classes, in category-id order (default: %(default)s)")
    p.add_argument("--map", action="append", metavar="DETECTOR=TARGET",
                   help="class map entry, repeatable (default: each target class maps from the detector class "
                        "of the same name). Giving any --map replaces that default")
    p.add_argument("--vehicles-as-car", action="store_true",
                   help="also map the detector's truck and bus to car")
    p.add_argument("--threshold", action="append", metavar="CLASS=SCORE",
                   help="score threshold for one target class, repeatable (e.g. --threshold person=0.7)")
    p.add_argument("--score-threshold", type=float, default=_d(PseudoParams, "score_threshold"),
                   help="score threshold for target classes without --threshold (default %(default)s; "
                        "params.yaml: pseudo.score_threshold)")
    p.add_argument("--nms-iou", type=float, default=_d(PseudoParams, "nms_iou"),
                   help="class-wise NMS IoU after mapping (merges e.g. a car and a truck box on one vehicle); "
                        "1.0 disables NMS (default %(default)s)")
    p.add_argument("--min-size", type=float, default=_d(PseudoParams, "min_size"),
                   help="drop boxes whose width or height is below this many pixels (default %(default)s)")
    p.add_argument("--max-per-image", type=int, default=_d(PseudoParams, "max_per_image"),
                   help="keep at most this many boxes per image, best scores first (default %(default)s)")
    p.add_argument("--no-histogram", action="store_true", help="do not write the per-class score histogram PNGs")


def _pseudo_run(args: argparse.Namespace) -> int:
    from tasks.pseudo import PseudoParams, run_pseudo

    class_map = _parse_kv_str(args.map, "--map") or None
    params = PseudoParams.validated(
        {"target_classes": tuple(args.classes), "class_map": class_map, "vehicles_as_car": args.vehicles_as_car,
         "thresholds": _parse_kv_floats(args.threshold, "--threshold"), "score_threshold": args.score_threshold,
         "nms_iou": args.nms_iou, "min_size": args.min_size, "max_per_image": args.max_per_image,
         "histogram": not args.no_histogram},
        **params_where("pseudo"))
    print_report(run_pseudo(args.inp, args.out, params))
    return 0


# ---------------------------------------------------------------- warp
def _warp_args(p: argparse.ArgumentParser) -> None:
    add_io_arguments(p, inp_help="COCO pseudo-labels on the RGB images (output of 'stage pseudo'), image ids as in the index",
                     out_help="COCO labels on the paired thermal images (same image ids), provenance kept per box.",
                     index="paired index JSON (from 'rgb2thermal data ...'): gives each image's thermal file, "
                           "sizes and dataset version (required)", cache=False)
    p.add_argument("--registry", type=Path, default=None,
                   help="homography registry folder (one YAML per dataset version; default: the package's "
                        "registration/homographies)")
    p.add_argument("--min-size", type=float, default=_d(WarpParams, "min_size"),
                   help="drop warped boxes whose width or height is below this many thermal pixels (default %(default)s)")
    p.add_argument("--min-visible-fraction", type=float, default=_d(WarpParams, "min_visible_fraction"),
                   help="drop warped boxes with less than this fraction of their area inside the thermal image "
                        "(default %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=_d(WarpParams, "device"),
                   help="where boxes are warped: cpu (numpy), cuda (kornia on the GPU) or auto (default): the GPU "
                        "when this machine has one torch can use, else numpy. Same numbers either way")


def _warp_run(args: argparse.Namespace) -> int:
    from tasks.warp import WarpParams, run_warp

    params = WarpParams.validated({"registry_dir": args.registry, "min_size": args.min_size,
                                   "min_visible_fraction": args.min_visible_fraction, "device": args.device},
                                  **params_where("warp"))
    print_report(run_warp(args.inp, args.out, params, index=args.index))
    return 0


STAGES: dict[str, StageCommand] = {
    "infer": StageCommand(_infer_args, _infer_run, "batched detector inference on a COCO file's images (cached per image)",
                          "Run an MMDetection detector (config + checkpoint) over the images a COCO file lists, in "
                          "batches, and write its detections as COCO with scores. Results are cached per image by "
                          "image content + model fingerprint + inference parameters: adding images infers only the "
                          "new ones. Unreadable images are reported and skipped."),
    "pseudo": StageCommand(_pseudo_args, _pseudo_run, "detections -> target-class pseudo-labels (thresholds, class map, NMS)",
                           "Turn detector output into pseudo-labels: map detector classes to target classes, apply "
                           "per-class score thresholds, class-wise NMS, a minimum box size and a per-image cap. "
                           "Writes a score histogram PNG per class and counts of kept/dropped boxes by reason."),
    "warp": StageCommand(_warp_args, _warp_run, "RGB pseudo-labels -> thermal boxes through each image's homography",
                         "Warp boxes from the RGB images onto the paired thermal images, each through its own dataset "
                         "version's (and RGB resolution's) homography from the registry. Boxes that end up too small "
                         "or mostly outside the thermal view are dropped and counted by reason."),
}


def stage_commands() -> dict[str, StageCommand]:
    """This module's stages plus those of every module in ``STAGE_MODULES`` that exists."""
    commands = dict(STAGES)
    for name in STAGE_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            log.debug("stage module %s not present", name)
            continue
        for stage, cmd in getattr(mod, "STAGES", {}).items():
            commands[stage] = cmd if isinstance(cmd, StageCommand) else StageCommand(*cmd)
    return commands


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stage", help="run one label-transfer stage (infer, pseudo, warp, refine, report) on COCO files",
                       description="Run one label-transfer stage alone: COCO JSON in, COCO JSON out, plus a JSON "
                                   "report beside the output (<out>.report.json). These are the commands DVC stages call.")
    stages = p.add_subparsers(dest="stage", metavar="STAGE")
    for name, cmd in stage_commands().items():
        sp = stages.add_parser(name, help=cmd.help, description=cmd.description or cmd.help)
        cmd.add_arguments(sp)
        sp.set_defaults(func=cmd.run)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
