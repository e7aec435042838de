"""``rgb2thermal register``: RGB->thermal homographies (estimate, check)."""
from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("register", help="RGB->thermal homographies: estimate and check registry entries",
                       description="Homographies live in one YAML file per dataset version "
                                   "(default registration/homographies/<version>.yaml), keyed by RGB resolution.")
    rsub = p.add_subparsers(dest="register_command", metavar="SUBCOMMAND")

    pe = rsub.add_parser("estimate", help="estimate a version's homography (points or automatic) and register it",
                         description="From point correspondences (--points: >= 4 pairs, RANSAC, error on held-out "
                                     "points) or automatically from the version's image pairs in an index (ECC on "
                                     "gradient images, pooled over pairs; its error is a consistency measure unless "
                                     "held-out points exist). The matrix is checked, written to the registry with its "
                                     "method and error, and an overlay PNG (thermal edges over warped RGB) is saved.")
    pe.add_argument("--version", required=True, help="dataset version tag (registry file name)")
    pe.add_argument("--points", type=Path, default=None, metavar="CSV_OR_JSON",
                    help="correspondences: CSV x_rgb,y_rgb,x_thermal,y_thermal or JSON {rgb: [[x,y]..], thermal: [[x,y]..]} "
                         "(continuous pixel coordinates)")
    pe.add_argument("--index", type=Path, default=None, metavar="INDEX_JSON",
                    help="paired index: image pairs for automatic estimation and the overlay; sizes from it")
    pe.add_argument("--rgb-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                    help="RGB resolution this entry is for (default: the index's most common one for the version)")
    pe.add_argument("--thermal-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                    help="thermal resolution (default: from the index)")
    pe.add_argument("--registry", type=Path, default=None, metavar="DIR",
                    help="registry folder (default registration/homographies)")
    pe.add_argument("--holdout-fraction", type=float, default=0.25,
                    help="share of correspondences held out to measure the error (default 0.25; kept only if >= 4 remain)")
    pe.add_argument("--ransac-px", type=float, default=3.0, help="RANSAC inlier threshold in thermal pixels (default 3)")
    pe.add_argument("--max-pairs", type=int, default=20, help="pairs used by automatic estimation (default 20)")
    pe.add_argument("--overlay", type=Path, default=None, metavar="PNG", help="write the check overlay here")
    pe.add_argument("--notes", default="", help="free text stored with the entry")
    pe.add_argument("--dry-run", action="store_true", help="estimate and report, but do not write the registry")
    pe.set_defaults(func=_run_estimate)

    pc = rsub.add_parser("check", help="check registry entries (or a matrix) for singular/flipping/wild homographies",
                         description="Load the registry entry of --version (all RGB resolutions, or --rgb-size) and "
                                     "check it; with --index, also check that every (version, RGB resolution) of the "
                                     "index has a valid entry. Exit code 2 with a clear message on the first problem.")
    pc.add_argument("--version", default=None, help="dataset version tag to check (default: all versions of --index)")
    pc.add_argument("--rgb-size", type=int, nargs=2, default=None, metavar=("W", "H"), help="only this RGB resolution")
    pc.add_argument("--index", type=Path, default=None, metavar="INDEX_JSON",
                    help="check that the registry covers every version and RGB resolution of this index")
    pc.add_argument("--registry", type=Path, default=None, metavar="DIR",
                    help="registry folder (default registration/homographies)")
    pc.set_defaults(func=_run_check)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def _run_estimate(args: argparse.Namespace) -> int:
    from tasks.register import estimate_for_version
    from core.errors import InputError

    if args.points is None and args.index is None:
        raise InputError("nothing to estimate from", "register estimate", "give --points and/or --index")
    run = estimate_for_version(args.version, points=args.points, index=args.index, rgb_size=args.rgb_size,
                               thermal_size=args.thermal_size, registry_dir=args.registry, max_pairs=args.max_pairs,
                               holdout_fraction=args.holdout_fraction, ransac_px=args.ransac_px,
                               overlay_path=args.overlay, notes=args.notes, write=not args.dry_run)
    e = run.estimate
    print(f"{args.version} {run.entry.rgb_size[0]}x{run.entry.rgb_size[1]}: method {e.method}, error "
          f"{e.error_px:.3f} px ({e.error_kind})" if e.error_px is not None else "error unknown")
    for row in e.H:
        print("  [" + ", ".join(f"{v: .6g}" for v in row) + "]")
    if run.registry_file:
        print(f"registered in {run.registry_file}")
    if run.overlay:
        print(f"overlay: {run.overlay}")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from registration.homography import check_homography
    from registration.registry import load_registry, lookup
    from core.errors import InputError

    todo: list[tuple[str, tuple[int, int] | None]] = []
    if args.index is not None:
        from data.index import load_index

        ix = load_index(args.index)
        todo = sorted({(p.version, p.rgb_size) for p in ix.pairs if args.version in (None, p.version)})
    elif args.version:
        todo = [(args.version, tuple(args.rgb_size) if args.rgb_size else None)]
    else:
        raise InputError("nothing to check", "register check", "give --version and/or --index")
    for version, size in todo:
        entries = [lookup(args.registry, version, size)] if size else load_registry(args.registry, version)
        for e in entries:
            c = check_homography(e.H, e.rgb_size, e.thermal_size, where=f"{version} {e.rgb_size[0]}x{e.rgb_size[1]}")
            err = f"{e.error_px:.3f} px ({e.error_kind})" if e.error_px is not None else "unknown"
            print(f"OK {version} {e.rgb_size[0]}x{e.rgb_size[1]} -> {e.thermal_size[0]}x{e.thermal_size[1]}: "
                  f"{e.method}, error {err}; scale {c.scale_min:.3f}..{c.scale_max:.3f}, anisotropy "
                  f"{c.anisotropy:.3f}, covers {c.overlap:.0%} of the thermal image")
    return 0
