"""``rgb2thermal data``: paired-dataset index, validation, merging, synthetic scenes."""
from __future__ import annotations

import argparse
from pathlib import Path

from data.index import DEFAULT_CLASSES

ORDER = 10

_FORMATS = ("folder", "flir_v1", "flir_v2")


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=_FORMATS, default="folder",
                   help="source layout: folder = generic rgb/ + thermal/ (+ labels_rgb/, labels_thermal/ in COCO JSON "
                        "or YOLO txt, split.csv, pairs.json); flir_v1 = FLIR_ADAS_1_3; flir_v2 = FLIR ADAS v2 "
                        "(default: folder)")
    p.add_argument("--root", type=Path, required=True, metavar="DIR", help="dataset root folder")
    p.add_argument("--version", required=True,
                   help="dataset version tag (e.g. flir_v1, flir_v2, msrs): selects homographies and exclusion lists; "
                        "pair ids become '<version>:<original id>'")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder: <version>.json index + COCO side files (+ reports for validate)")
    p.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES), metavar="NAME",
                   help="target classes in category-id order (1-based; default: %(default)s)")
    p.add_argument("--class-map", type=Path, default=None, metavar="YAML",
                   help="YAML/JSON mapping dataset class name -> target class (or null to drop); unmapped classes "
                        "are dropped and counted")
    p.add_argument("--pairs-file", type=Path, default=None, metavar="JSON",
                   help="explicit pairs: JSON list of {\"rgb\": path, \"thermal\": path} relative to --root "
                        "(folder: overrides pairing by file stem; flir_v2: pairs train/val frames)")
    p.add_argument("--exclusions", type=Path, default=None, metavar="JSON",
                   help="this version's exclusion list (written by data validate); another version's list is refused")
    p.add_argument("--max-sync-offset", type=float, default=0.1, metavar="SECONDS",
                   help="exclude pairs whose RGB/thermal timestamps differ by more than this (where timestamps exist)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="paired datasets: index, validate, merge versions, generate synthetic scenes",
                       description="Build and check the paired RGB/thermal index that every later stage reads.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _add_index(dsub)
    _add_validate(dsub)
    _add_merge(dsub)
    _add_synth(dsub)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def _add_index(dsub: argparse._SubParsersAction) -> None:
    """``data index``: build one version's index."""
    pi = dsub.add_parser("index", help="index a dataset version (pairs, sizes, split, labels -> COCO)",
                         description="Find the RGB/thermal pairs of one dataset version, check them (existence, "
                                     "image headers, sizes, ids, labels), convert labels to the target classes and "
                                     "write <out>/<version>.json plus COCO files sharing one image id per pair. "
                                     "Bad items are excluded with a reason, listed in the index.")
    _source_args(pi)
    pi.add_argument("--decode", action="store_true",
                    help="fully decode every image to catch corrupt files (slower; data validate always does)")
    pi.set_defaults(func=_run_index)


def _add_validate(dsub: argparse._SubParsersAction) -> None:
    """``data validate``: index with full decoding (or re-check an index) and write the reports."""
    pv = dsub.add_parser("validate", help="validate pairs: report (Markdown + JSON) and per-version exclusion list",
                         description="Index a dataset version with full image decoding and write "
                                     "<out>/<version>.validation.{md,json} (pairs found, RGB without thermal and vice "
                                     "versa, unreadable images, size mismatches, duplicate ids, labels pointing at "
                                     "missing images, boxes outside images, sync offsets) and "
                                     "<out>/<version>.exclusions.json. With --index instead of --root, re-check an "
                                     "existing index's files. Exit code 1 if anything was excluded or reported.")
    src = pv.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", type=Path, metavar="DIR", help="dataset root folder (build + validate)")
    src.add_argument("--index", type=Path, metavar="INDEX_JSON", help="re-check an existing index instead")
    pv.add_argument("--format", choices=_FORMATS, default="folder", help="source layout with --root (default: folder)")
    pv.add_argument("--version", help="dataset version tag (required with --root)")
    pv.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder for index and reports")
    pv.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES), metavar="NAME",
                    help="target classes (default: %(default)s)")
    pv.add_argument("--class-map", type=Path, default=None, metavar="YAML", help="class name mapping (see data index)")
    pv.add_argument("--pairs-file", type=Path, default=None, metavar="JSON", help="explicit pairs (see data index)")
    pv.add_argument("--exclusions", type=Path, default=None, metavar="JSON", help="this version's exclusion list to apply")
    pv.add_argument("--max-sync-offset", type=float, default=0.1, metavar="SECONDS",
                    help="largest accepted RGB/thermal timestamp difference (default 0.1 s)")
    pv.add_argument("--strict", action="store_true", help="also exit 1 when only label issues (no exclusions) were found")
    pv.set_defaults(func=_run_validate)


def _add_merge(dsub: argparse._SubParsersAction) -> None:
    """``data merge``: several versions' indexes into one."""
    pm = dsub.add_parser("merge", help="merge indexes of several versions into one (ids stay apart)",
                         description="Merge version indexes (e.g. flir_v1 + flir_v2) into one index; every image keeps "
                                     "its version tag and original id, COCO image ids are renumbered without collisions.")
    pm.add_argument("indexes", nargs="+", type=Path, metavar="INDEX_JSON", help="two or more index files")
    pm.add_argument("--out", type=Path, required=True, metavar="INDEX_JSON", help="merged index file to write")
    pm.set_defaults(func=_run_merge)


def _add_synth(dsub: argparse._SubParsersAction) -> None:
    """``data synth``: generated paired scenes with a known homography."""
    ps = dsub.add_parser("synth", help="generate synthetic paired RGB/thermal scenes with a known homography",
                         description="Deterministic (seeded) street scenes: RGB and a second thermal camera with a "
                                     "known homography, person/car boxes in both frames, day and night. Writes the "
                                     "generic folder layout (index it with: data index --format folder).")
    ps.add_argument("out", type=Path, metavar="DIR", help="output folder")
    ps.add_argument("--n", type=int, default=100, help="number of pairs (default 100)")
    ps.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ps.add_argument("--start-index", type=int, default=0,
                    help="first frame index; use the current count to extend an existing set (default 0)")
    ps.add_argument("--rgb-size", type=int, nargs=2, default=(320, 256), metavar=("W", "H"), help="RGB size (default 320 256)")
    ps.add_argument("--thermal-size", type=int, nargs=2, default=(256, 208), metavar=("W", "H"),
                    help="thermal size (default 256 208)")
    ps.add_argument("--night-fraction", type=float, default=0.5, help="share of night frames (default 0.5)")
    ps.add_argument("--night-hidden-people", type=float, default=0.0, metavar="SHARE",
                    help="share of night people drawn in thermal only: invisible in RGB and absent from the RGB "
                         "labels, as on real night pairs (default 0: everyone drawn in both; 0.8 reproduces the "
                         "real problem)")
    ps.add_argument("--objects", type=int, nargs=2, default=(1, 5), metavar=("MIN", "MAX"),
                    help="objects per image (default 1 5)")
    ps.add_argument("--version", default="synthetic", help="version tag recorded in the metadata (default synthetic)")
    ps.set_defaults(func=_run_synth)


def _opts(args: argparse.Namespace, decode: bool):
    from data.index_build import BuildOptions

    return BuildOptions(decode_images=decode, max_sync_offset_s=args.max_sync_offset)


def _run_index(args: argparse.Namespace) -> int:
    from data.adapters import get_adapter

    ix = get_adapter(args.format).build_index(args.root, args.version, args.out, classes=args.classes,
                                              class_map=args.class_map, pairs_file=args.pairs_file,
                                              exclusions=args.exclusions, options=_opts(args, args.decode))
    s = ix.stats
    print(f"{ix.path}: {s['pairs']} pairs, {s['excluded']} excluded {s['excluded_by_reason'] or ''}, "
          f"issues {s['issues_by_kind'] or 'none'}, labels {s['labels']}")
    return 0


def _run_validate(args: argparse.Namespace) -> int:
    from data.validate import validate_index, validate_source
    from core.errors import InputError

    if args.root is not None:
        if not args.version:
            raise InputError("--version is required with --root", "data validate", "add --version <tag>")
        rep = validate_source(args.format, args.root, args.version, args.out, classes=args.classes,
                              class_map=args.class_map, pairs_file=args.pairs_file, exclusions=args.exclusions,
                              options=_opts(args, True))
    else:
        rep = validate_index(args.index, args.out)
    print(f"{rep.pairs} pairs kept; excluded {rep.excluded_by_reason or 'none'}; issues {rep.issues_by_kind or 'none'}")
    print(f"report: {rep.report_md}  ({rep.report_json.name})")
    for v, p in rep.exclusions.items():
        print(f"exclusion list for {v}: {p}")
    bad = bool(rep.excluded_by_reason) or (args.strict and bool(rep.issues_by_kind))
    return 1 if bad else 0


def _run_merge(args: argparse.Namespace) -> int:
    from data.merge import merge_indexes

    m = merge_indexes(args.indexes, args.out)
    print(f"{m.path}: {m.stats['pairs']} pairs from {m.stats['by_version']}")
    return 0


def _run_synth(args: argparse.Namespace) -> int:
    from data.synthetic import generate

    info = generate(args.out, args.n, args.seed, rgb_size=tuple(args.rgb_size), thermal_size=tuple(args.thermal_size),
                    night_fraction=args.night_fraction, night_hidden_people=args.night_hidden_people,
                    objects_per_image=tuple(args.objects), version=args.version,
                    start_index=args.start_index)
    print(f"{info.out_dir}: wrote {len(info.generated)} pairs ({info.n_pairs} in total) in {info.seconds:.1f}s "
          f"({len(info.generated) / max(info.seconds, 1e-9):.0f} pairs/s)")
    return 0
