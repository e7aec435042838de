"""``rgb2thermal steps`` (the plan a parameter file runs) and ``rgb2thermal dvc-yaml`` (the
``dvc.yaml`` generated from it): both read the one declaration in :mod:`pipeline.plan`."""
from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 55


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("steps", help="list the steps params.yaml runs and what each one reads",
                       description="The plan of a parameter file: one line per step with its kind, parameter "
                                   "sections, the upstream outputs it reads and the external files it depends on.")
    s.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="PARAMS_YAML",
                   help="pipeline parameters (default: params.yaml)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter with a dotted key, as for `rgb2thermal run`; repeatable")
    s.set_defaults(func=steps)

    d = sub.add_parser("dvc-yaml", help="write dvc.yaml generated from the pipeline steps and params.yaml",
                       description="Generate the DVC pipeline (one stage per step: deps = upstream stage folders + "
                                   "every external file the step reads, params = its sections) from the same "
                                   "declaration the plain run and the Prefect flow use. Re-run it after changing "
                                   "paths or enabled steps in params.yaml.")
    d.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="PARAMS_YAML",
                   help="pipeline parameters (default: params.yaml); dvc.yaml goes beside it")
    d.add_argument("--workspace", default="workspace", metavar="DIR",
                   help="workspace folder, relative to the project root (default: workspace)")
    d.add_argument("--output", type=Path, default=None, metavar="FILE",
                   help="where to write (default: dvc.yaml beside PARAMS_YAML; '-' prints it)")
    d.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the existing file differs from the generated one")
    d.set_defaults(func=dvc_yaml)


def steps(args: argparse.Namespace) -> int:
    from pipeline.params import load_params
    from pipeline.plan import plan

    rows = ["| step | kind | sections | reads | external |", "|---|---|---|---|---|"]
    for st in plan(load_params(args.params, args.overrides)):
        reads = ", ".join(f"{role}={r.step}:{r.role}" for role, r in st.needs.items()) or "—"
        ext = ", ".join(f"{role}={p}" for role, p in st.external.items()) or "—"
        rows.append(f"| {st.name} | {st.kind} | {', '.join(st.sections) or '—'} | {reads} | {ext} |")
    print("\n".join(rows))
    return 0


def dvc_yaml(args: argparse.Namespace) -> int:
    import sys

    from core import atomic
    from pipeline.dvcgen import dvc_yaml as generate
    from pipeline.params import load_params

    root = args.params.resolve().parent
    text = generate(load_params(args.params), root, workspace=args.workspace, params_file=args.params.name)
    out = args.output or root / "dvc.yaml"
    if str(out) == "-":
        sys.stdout.write(text)
        return 0
    if args.check:
        same = out.is_file() and out.read_text() == text
        print(f"{out}: {'up to date' if same else 'STALE: run rgb2thermal dvc-yaml'}")
        return 0 if same else 1
    atomic.write_text(out, text)
    print(f"wrote {out}")
    return 0
