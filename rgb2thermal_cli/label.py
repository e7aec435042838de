"""``rgb2thermal label pick`` / ``label import``: the labelling loop (predict -> correct -> retrain).

``pick`` runs the plan's ``pick`` step (``label.pick_n`` frames; the steps before it must have run in the
workspace, as for ``run --stage``): the export lands in ``WORKSPACE/stages/pick/`` and the run record
lists it. ``import`` brings a CVAT / Label Studio export back into the dataset folder
(:mod:`tasks.label_import`), then versions it: ``dvc add`` when the folder is DVC-tracked, else it
prints the commands. README "The labelling loop" walks through it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from data.index import DEFAULT_CLASSES

ORDER = 52


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="the labelling loop: pick uncertain thermal frames to label, import the "
                                     "corrected labels (val split or training labels)",
                       description="pick: choose the N thermal adapt frames whose labels are most uncertain and "
                                   "export them as a labelling task (COCO, CVAT XML, Label Studio JSON). import: "
                                   "bring the corrected labels back into the dataset as a labelled split.")
    ls = p.add_subparsers(dest="label_cmd", metavar="{pick,import}")
    pk = ls.add_parser("pick", help="export N thermal adapt frames as a labelling task (the most uncertain, or "
                                    "with --for val a random draw)",
                       description="Runs the pipeline's `pick` step on a finished run's outputs (never test or val "
                                   "frames, balanced day/night, deterministic for a seed): the N most uncertain "
                                   "frames (--for training) or N frames at random (--for val), and writes WORKSPACE/"
                                   "stages/pick/: images/, tasks.json (COCO), cvat.xml, label_studio.json, "
                                   "label_studio_config.xml, picked.json.")
    pk.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="PARAMS_YAML",
                    help="the parameters of the run (default: params.yaml)")
    pk.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one parameter, as for `rgb2thermal run`; repeatable")
    pk.add_argument("--workspace", type=Path, default=Path("workspace"), metavar="DIR",
                    help="the run's workspace (default: ./workspace)")
    pk.add_argument("--n", type=int, default=None, help="frames to pick (default: label.pick_n, else 20)")
    pk.add_argument("--seed", type=int, default=None, help="tie-break seed (default: label.seed)")
    pk.add_argument("--for", dest="purpose", choices=("training", "val"), default=None,
                    help="training: the most uncertain frames, to correct and import with --as-training; val: a "
                         "random draw balanced over day/night, for the val split that decisions read (an uncertain "
                         "pick is the hardest frames, a biased yardstick) (default: label.purpose, else training)")
    pk.set_defaults(func=pick)

    im = ls.add_parser("import", help="import corrected labels (COCO 1.0, CVAT for images 1.1, Label Studio JSON)",
                       description="Validate every frame and box first (frames of the dataset, not test frames, "
                                   "known classes, boxes inside the image); a refused import changes nothing. Then "
                                   "write labels_thermal/human_labels.json and the frames' split.csv rows.")
    im.add_argument("file", type=Path, help="the file CVAT or Label Studio exported")
    im.add_argument("--dataset", type=Path, required=True, metavar="DIR", help="the dataset root (folder layout)")
    im.add_argument("--split", default="val", help="the split the frames join (default: val; data.val_split names it)")
    im.add_argument("--as-training", action="store_true",
                    help="keep the frames' split: their labels replace the pseudo-labels in training "
                         "(set label.override: true)")
    im.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES), metavar="NAME",
                    help="the target classes, data.classes (default: %(default)s)")
    im.add_argument("--test-split", default="test", help="frames of this split are refused (default: test)")
    im.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` even when the folder is DVC-tracked")
    im.set_defaults(func=import_)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def pick(args: argparse.Namespace) -> int:
    from pipeline.executor import run_pipeline
    from pipeline.params import load_params

    params = load_params(args.params, args.overrides)
    n = args.n if args.n is not None else (params.label.pick_n or 20)
    sets = [f"label.pick_n={n}", *([f"label.seed={args.seed}"] if args.seed is not None else []),
            *([f"label.purpose={args.purpose}"] if args.purpose else [])]
    params = load_params(args.params, [*args.overrides, *sets])
    run_pipeline(params, args.workspace, flow="label", only="pick")
    out = args.workspace / "stages" / "pick"
    then = ("rgb2thermal label import <exported file> --dataset <dataset root>   (the val split; set data.val_split: val)"
            if params.label.purpose == "val" else
            "rgb2thermal label import <exported file> --dataset <dataset root> --as-training   (set label.override: true)")
    print(f"picked {n} frames ({params.label.purpose}) -> {out}\n"
          f"  CVAT: create a task with {out / 'images'}, then Upload annotations -> COCO 1.0 -> {out / 'tasks.json'}\n"
          f"  Label Studio: import {out / 'label_studio.json'} (labelling config: {out / 'label_studio_config.xml'})\n"
          f"  then: {then}")
    return 0


def _version(root: Path, no_dvc: bool) -> str:
    """``dvc add`` the dataset folder when it is DVC-tracked (``<root>.dvc`` beside it), else the commands to run."""
    import subprocess
    import sys

    from core.errors import InputError

    pointer = root.parent / f"{root.name}.dvc"
    if not pointer.is_file() or no_dvc:
        return (f"version it: dvc add {root} && git add {pointer} && git commit -m 'labels: human thermal labels'"
                if not pointer.is_file() else f"not versioned (--no-dvc): run dvc add {root}")
    res = subprocess.run([sys.executable, "-m", "dvc", "add", root.name], cwd=root.parent, capture_output=True, text=True)
    if res.returncode != 0:
        raise InputError(f"dvc add failed: {res.stderr.strip()[-500:]}", str(root),
                         f"run `dvc add {root}` yourself (the labels are written)")
    return f"dvc add {root}: done; commit {pointer} (git add {pointer} && git commit)"


def import_(args: argparse.Namespace) -> int:
    from tasks.label_import import import_labels

    res = import_labels(args.file, args.dataset, args.classes, split=args.split, as_training=args.as_training,
                        test_split=args.test_split)
    print(f"imported {res.boxes} boxes on {len(res.frames)} frames into {args.dataset} (split: {res.split})")
    for f in res.files:
        print(f"  wrote {f}")
    print(_version(args.dataset.resolve(), args.no_dvc))
    print("next: set label.override: true in params.yaml and run again" if args.as_training else
          f"next: set data.val_split: {args.split} in params.yaml and run again: decisions are made on it")
    return 0
