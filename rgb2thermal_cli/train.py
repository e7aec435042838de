"""``rgb2thermal train`` (guarded MMDetection training from a spec) and ``rgb2thermal predict``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = 40

TRAIN_EPILOG = """\
Example spec (YAML; relative paths are relative to the spec file):

  base_model: yolox_tiny_8xb8-300e_coco      # or a path to an mmdet .py config
  classes: [person, car]
  train: {ann_file: data/train.json, img_root: data/images}
  val:   {ann_file: data/val.json,   img_root: data/images}
  work_dir: runs/thermal_student
  input_size: [416, 416]                     # (width, height), multiples of 32
  epochs: 30
  batch_size: 8                              # lr defaults to 0.01 x batch / 64
  load_from: coco_yolox_tiny.pth             # COCO rows carried into the 2-class head
  losses: {loss_cls: {type: FocalLoss, gamma: 2.0, alpha: 0.25}, loss_bbox: {type: CIoULoss}}
  early_stop_patience: 5
  gpus: 2                                    # processes under torchrun (DDP); batch_size is per process

Writes work_dir/config.py (the fully resolved mmdet config), best and last checkpoints,
best_slim.pth (inference weights, safe to load), train_result.json. Flags override the spec.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an MMDetection detector from a spec (guarded, best/last checkpoints)",
                       description="Generate a fully resolved MMDetection config from a small spec and train it: "
                                   "refuses empty datasets, stops at the first NaN/inf loss, keeps the best "
                                   "checkpoint by coco/bbox_mAP_50 and the last, optional early stopping and resume.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", metavar="SPEC.yaml", help="training spec (YAML); flags below override its fields")
    p.add_argument("--base-model", help="mmdet bundled config name (yolox_tiny_8xb8-300e_coco) or .py config path")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="target classes in category-id order (default person car)")
    p.add_argument("--train-ann", metavar="COCO.json", help="training annotations (COCO)")
    p.add_argument("--train-images", metavar="DIR", help="folder the training file_name entries are relative to")
    p.add_argument("--val-ann", metavar="COCO.json", help="validation annotations (best checkpoint chosen on them)")
    p.add_argument("--val-images", metavar="DIR", help="folder of the validation images")
    p.add_argument("--test-ann", metavar="COCO.json", help="after training, predict on this set and write eval tables")
    p.add_argument("--test-images", metavar="DIR", help="folder of the test images")
    p.add_argument("--work-dir", metavar="DIR", help="run directory (config, checkpoints, results)")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("W", "H"), help="network input size, multiples of 32")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="images per batch")
    p.add_argument("--lr", type=float, help="base learning rate (default 0.01 x batch / 64)")
    p.add_argument("--load-from", metavar="CKPT.pth", help="initial weights (class head transferred by name)")
    p.add_argument("--head-init", choices=["transfer", "reinit"], help="carry mapped classifier rows or re-initialise")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="training device (default auto)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--early-stop-patience", type=int, metavar="N",
                   help="stop after N validations without a better coco/bbox_mAP_50")
    p.add_argument("--num-workers", type=int, help="data loading worker processes")
    p.add_argument("--gpus", type=int, help="training processes per node under torchrun (GPUs; on CPU, processes)")
    p.add_argument("--nnodes", type=int, help="machines training together (this one is node 0; see README)")
    p.add_argument("--master-addr", help="with --nnodes > 1: this machine's address the other nodes reach")
    p.add_argument("--master-port", type=int, help="with --nnodes > 1: the rendezvous port (default 29500)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from work_dir's last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    q = sub.add_parser("predict", help="run a detector on a COCO dataset's images and write COCO results JSON",
                       description="Load a detector (config + checkpoint, e.g. a run's config.py and best_slim.pth), "
                                   "run it over every image of a COCO file with the infer stage (per-image cache; "
                                   "unreadable frames are skipped and listed) and write COCO results (xywh boxes, "
                                   "image and category ids of that file, classes matched by name) for "
                                   "`rgb2thermal eval`. The infer stage's COCO output is kept beside --out "
                                   "as <out>.infer.json.")
    q.add_argument("--config", required=True, help="mmdet config (.py path or bundled name)")
    q.add_argument("--checkpoint", required=True, help="checkpoint .pth (trusted: it is unpickled)")
    q.add_argument("--ann", required=True, metavar="COCO.json", help="dataset whose images to predict on")
    q.add_argument("--images", required=True, metavar="DIR", help="folder the dataset's file_name entries are relative to")
    q.add_argument("--out", required=True, metavar="RESULTS.json", help="where to write the COCO results list")
    q.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    q.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    q.add_argument("--min-score", type=float, default=0.01,
                   help="detections below this score are not kept (default 0.01; never above 0.01, as COCO AP "
                        "counts low-score detections)")
    q.add_argument("--input-size", nargs=2, type=int, metavar=("W", "H"),
                   help="test input size in pixels (default: the config's); score a model at the size you use it at")
    q.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="per-image inference cache (content-addressed; default <folder of --out>/.cache/infer)")
    q.set_defaults(func=run_predict)


def _overrides(args: argparse.Namespace) -> dict:
    o: dict = {"base_model": args.base_model, "classes": args.classes, "work_dir": args.work_dir,
               "input_size": tuple(args.input_size) if args.input_size else None, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "load_from": args.load_from, "head_init": args.head_init,
               "device": args.device, "seed": args.seed, "early_stop_patience": args.early_stop_patience,
               "num_workers": args.num_workers, "resume": args.resume, "gpus": args.gpus, "nnodes": args.nnodes,
               "master_addr": args.master_addr, "master_port": args.master_port,
               "progress": False if args.no_progress else None}
    for role in ("train", "val", "test"):
        ann, img = getattr(args, f"{role}_ann"), getattr(args, f"{role}_images")
        if (ann is None) != (img is None):
            from core.errors import InputError

            raise InputError(f"--{role}-ann and --{role}-images go together", f"--{role}-*", "pass both or neither")
        if ann is not None:
            o[role] = {"ann_file": ann, "img_root": img}
    return {k: v for k, v in o.items() if v is not None}


def run_train(args: argparse.Namespace) -> int:
    from tasks.train import train
    from detection.train_spec import load_spec, spec_from_dict

    overrides = _overrides(args)
    spec = load_spec(args.spec, overrides) if args.spec else spec_from_dict(overrides, "command-line flags")
    result = train(spec)
    best = result.metrics.get("best") or {}
    print(f"run: {result.run_dir}")
    print(f"config: {result.config_path}")
    print(f"best checkpoint: {result.best_checkpoint}  (coco/bbox_mAP_50 {best.get('coco/bbox_mAP_50', 'n/a')} "
          f"at epoch {best.get('epoch', 'n/a')})")
    print(f"inference weights: {result.slim_checkpoint}")
    print(f"epochs run: {result.epochs_run}{' (stopped early)' if result.stopped_early else ''}; "
          f"wall {result.timings['total_s']:.1f} s, median iteration {result.timings['train_iter_median_s']} s")
    if result.test_predictions:
        print(f"test predictions: {result.test_predictions}")
        print((result.run_dir / "eval_test.md").read_text())
    for w in result.warnings:
        print(f"warning: {w}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """The infer stage over the dataset's frames (cached per image under ``--cache-dir``, default
    ``<folder of --out>/.cache/infer``), then its detections as COCO results for the dataset's categories."""
    from core import atomic
    from tasks.infer import InferParams, infer_results

    params = InferParams.validated({"config": args.config, "checkpoint": args.checkpoint, "device": args.device,
                                    "batch_size": args.batch_size, "min_score": args.min_score,
                                    **({"input_size": tuple(args.input_size)} if args.input_size else {})}, "predict")
    out = Path(args.out)
    cache = args.cache_dir if args.cache_dir is not None else out.parent / ".cache" / "infer"
    results, rep = infer_results(Path(args.ann), out.with_name(out.stem + ".infer.json"), params, cache_dir=cache,
                                 image_root=Path(args.images))
    atomic.write_json(out, results)
    print(json.dumps({"detector": rep.models["detector"], "fingerprint": rep.params["model_fingerprint"],
                      "test_size": rep.params["test_size"], "detections": len(results), "out": str(out),
                      "cache_hits": rep.cache_hits, "cache_misses": rep.cache_misses,
                      "skipped_images": rep.skipped_images}, indent=2))
    return 0
