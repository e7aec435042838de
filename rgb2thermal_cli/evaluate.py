"""``rgb2thermal eval``: COCO tables per category (Markdown + JSON), runs side by side, or a matrix."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

ORDER = 45

EPILOG = """\
Examples:
  rgb2thermal eval --gt test.json --pred baseline.json --pred adapted.json --out results/table
  rgb2thermal eval --test-set msrs msrs.json --test-set flir flir.json \\
      --cell source-only msrs so_msrs.json --cell adapted msrs ad_msrs.json --cell adapted flir ad_flir.json

Metrics (pycocotools COCOeval, bbox): mAP (IoU .50:.95), mAP_50, mAP_75, mAP_s/m/l, AR_1/10/100.
'—' marks a category without ground truth in a size range (COCO's -1). Image and category ids of
the predictions must exist in the ground truth (a mismatch is an error, not mAP = 0).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO evaluation table per category (Markdown + JSON); runs side by side",
                       description="Score COCO results files against a COCO ground truth with pycocotools and print "
                                   "a paper-style Markdown table: one row per category plus 'all', one column block "
                                   "per prediction file. With --test-set/--cell: a models x test sets matrix.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", metavar="GT.json", help="ground-truth COCO dataset")
    p.add_argument("--pred", action="append", default=[], metavar="PRED.json",
                   help="COCO results list (repeat for several runs; each gets a column block)")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="column-block name for each --pred, in order (default: file stem)")
    p.add_argument("--metrics", nargs="+", metavar="M",
                   help="metrics to show (default all: mAP mAP_50 mAP_75 mAP_s mAP_m mAP_l AR_1 AR_10 AR_100)")
    p.add_argument("--digits", type=int, default=3, help="decimals in the table (default 3)")
    p.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md and PREFIX.json")
    p.add_argument("--test-set", nargs=2, action="append", default=[], metavar=("NAME", "GT.json"),
                   help="matrix mode: declare a test set (repeat)")
    p.add_argument("--cell", nargs=3, action="append", default=[], metavar=("MODEL", "TEST_SET", "PRED.json"),
                   help="matrix mode: predictions of MODEL on TEST_SET (repeat)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from tasks.evaluate import METRICS, cross_dataset_matrix, evaluate_runs, format_markdown, format_matrix_markdown

    if args.test_set or args.cell:
        if args.gt or args.pred:
            raise InputError("--gt/--pred and --test-set/--cell are different modes", "eval", "use one mode")
        if not args.test_set or not args.cell:
            raise InputError("matrix mode needs --test-set and --cell", "eval", "see `rgb2thermal eval --help`")
        matrix = cross_dataset_matrix(dict(args.test_set), [tuple(c) for c in args.cell])
        metrics = args.metrics or ["mAP", "mAP_50"]
        return _show(format_matrix_markdown(matrix, metrics, args.digits), args.out, matrix.to_json)
    if not args.gt or not args.pred:
        raise InputError("--gt and at least one --pred are required", "eval", "see `rgb2thermal eval --help`")
    if args.name and len(args.name) != len(args.pred):
        raise InputError(f"{len(args.name)} --name for {len(args.pred)} --pred", "eval", "give one name per --pred")
    preds = dict(zip(args.name, args.pred)) if args.name else args.pred
    if args.name and len(set(args.name)) != len(args.name):
        raise InputError("duplicate --name", "eval", "give each run a distinct name")
    report = evaluate_runs(args.gt, preds)
    metrics = args.metrics or list(METRICS)
    return _show(format_markdown(report, metrics, args.digits), args.out, report.to_json)


def _show(text: str, out: str | None, numbers: Callable[[], Any]) -> int:
    """Print the Markdown table; with ``--out PREFIX`` also write PREFIX.md and ``numbers()`` as PREFIX.json."""
    from core import atomic

    print(text, end="")
    if out:
        atomic.write_text(out + ".md", text)
        atomic.write_json(out + ".json", numbers())
    return 0
