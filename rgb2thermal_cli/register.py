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
                                     "points) or automatically from the version's image pairs in an index (global "
                                     "search over scale/aspect/rotation/translation, then one homography refined jointly "
                                     "over all pairs; pairs that disagree are rejected; the error is measured on pairs "
                                     "held out of the fit). The matrix is checked, written to the registry with its "
                                     "method and error, and an overlay PNG (thermal edges over warped RGB) is saved. "
                                     "An entry whose error is above 3 px is written but refused by 'register check' "
                                     "and the warp stage.")
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

    pc = rsub.add_parser("check", help="check registry entries: plausible matrix AND measured error below a threshold",
                         description="Load the registry entry of --version (all RGB resolutions, or --rgb-size) and "
                                     "check it: the matrix must be plausible (not singular, flipping or wild) and its "
                                     "measured error and held-out error at most --max-error-px thermal px (automatic "
                                     "estimates without a held-out error are refused too). With --index, also check "
                                     "that every (version, RGB resolution) of the index has an entry, and state the "
                                     "threshold relative to the median box size of the index's labels. Prints one "
                                     "line per entry (OK / UNVERIFIED / REFUSED); exit code 2 when any is refused.")
    pc.add_argument("--version", default=None, help="dataset version tag to check (default: all versions of --index)")
    pc.add_argument("--rgb-size", type=int, nargs=2, default=None, metavar=("W", "H"), help="only this RGB resolution")
    pc.add_argument("--index", type=Path, default=None, metavar="INDEX_JSON",
                    help="check that the registry covers every version and RGB resolution of this index")
    pc.add_argument("--registry", type=Path, default=None, metavar="DIR",
                    help="registry folder (default registration/homographies)")
    pc.add_argument("--max-error-px", type=float, default=None, metavar="PX",
                    help="largest trusted error (measured or held-out), thermal pixels (default 3)")
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
          + (f"{e.error_px:.3f} px ({e.error_kind})" if e.error_px is not None else "unknown"))
    from registration.registry import assess_entry

    v = assess_entry(run.entry)
    if v.refused:
        print(f"REFUSED by register check and the warp stage: {'; '.join(v.reasons)}. Fix: click points "
              f"(rgb2thermal register estimate --version {args.version} --points POINTS.csv)")
    for row in e.H:
        print("  [" + ", ".join(f"{v: .6g}" for v in row) + "]")
    if run.registry_file:
        print(f"registered in {run.registry_file}")
    if run.overlay:
        print(f"overlay: {run.overlay}")
    return 0


def _median_box_px(ix) -> float | None:
    """Median box size sqrt(w*h) of the index's thermal labels (else RGB labels), pixels; None without labels."""
    import numpy as np

    for modality in ("thermal", "rgb"):
        ds = ix.load_labels(modality)
        if ds and ds.get("annotations"):
            wh = np.array([a["bbox"][2:4] for a in ds["annotations"]], dtype=np.float64)
            return float(np.median(np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None))))
    return None


def _run_check(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from registration.homography import check_homography
    from registration.registry import DEFAULT_MAX_ERROR_PX, assess_entry, load_registry, lookup, registry_path, threshold_note

    thr = DEFAULT_MAX_ERROR_PX if args.max_error_px is None else float(args.max_error_px)
    if not thr > 0:
        raise InputError(f"--max-error-px must be > 0, got {thr}", "register check", "give a threshold in thermal pixels")
    todo: list[tuple[str, tuple[int, int] | None]] = []
    box_px = None
    if args.index is not None:
        from data.index import load_index

        ix = load_index(args.index)
        todo = sorted({(p.version, p.rgb_size) for p in ix.pairs if args.version in (None, p.version)})
        box_px = _median_box_px(ix)
    elif args.version:
        todo = [(args.version, tuple(args.rgb_size) if args.rgb_size else None)]
    else:
        raise InputError("nothing to check", "register check", "give --version and/or --index")
    print(f"threshold: {threshold_note(thr, box_px)} (measured or held-out error, thermal pixels)")
    refused = []
    for version, size in todo:
        entries = [lookup(args.registry, version, size)] if size else load_registry(args.registry, version)
        for e in entries:
            name = f"{version} {e.rgb_size[0]}x{e.rgb_size[1]}"
            c = check_homography(e.H, e.rgb_size, e.thermal_size, where=name)
            v = assess_entry(e, thr)
            err = f"{e.error_px:.3f} px ({e.error_kind})" if e.error_px is not None else "unknown"
            if e.heldout_error_px is not None:
                err += f", held-out {e.heldout_error_px:.3f} px"
            print(f"{v.status.upper()} {name} -> {e.thermal_size[0]}x{e.thermal_size[1]}: "
                  f"{e.method}, error {err}; scale {c.scale_min:.3f}..{c.scale_max:.3f}, anisotropy "
                  f"{c.anisotropy:.3f}, covers {c.overlap:.0%} of the thermal image"
                  + (f" -- {'; '.join(v.reasons)}" if v.reasons else ""))
            if v.refused:
                refused.append((name, v, registry_path(args.registry, version), version, e.rgb_size))
    if refused:
        name, v, path, version, size = refused[0]
        raise InputError(f"{len(refused)} registry entr{'y' if len(refused) == 1 else 'ies'} refused; first: {name}: "
                         f"{'; '.join(v.reasons)}", str(path),
                         f"click points and re-estimate: rgb2thermal register estimate --version {version} --rgb-size "
                         f"{size[0]} {size[1]} --points POINTS.csv (or, knowingly, raise --max-error-px)")
    return 0
