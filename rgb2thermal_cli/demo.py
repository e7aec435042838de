"""``rgb2thermal demo``: the whole adaptation pipeline on embedded synthetic data (``make demo``).

Why: a new user (and CI) must see the product work end to end without downloading anything:
no COCO weights, no data set. So the demo

1. generates the synthetic paired data set ``data/sample`` (seeded, :func:`data.synthetic.generate`)
   unless it already holds exactly the set the ``data.synthetic`` section of the demo parameters
   describes (a set from an older generator version is regenerated),
2. trains a small RGB teacher from random weights on its labelled RGB adapt split,
3. runs every pipeline step (:func:`pipeline.executor.run_pipeline`, the code behind ``rgb2thermal
   run``, the Prefect flow and DVC): inference -> pseudo-labels -> homography warp -> box
   refinement -> thermal students -> evaluation on the thermal test split,
4. prints the per-class table — source-only (the RGB teacher on thermal), the classic recipe
   (refined RGB labels alone), each self-training round (RGB + thermal pseudo-labels, fused) and
   the oracle (the adapt frames' thermal labels, an upper bound) — and the wall time.

Parameters: ``params.yaml`` (the repository default), sized for a 2-core CPU. The
demo replaces its ``data.synthetic`` section by ``data.roots: [data/sample]`` (so the data lives
where users look for it) and points ``warp.registry_dir`` at a registry written from the data
set's own ``homography.json`` (RGB -> thermal, continuous pixel coordinates), so the warp uses
the exact homography the data was generated with.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ORDER = 1

_REPO = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = _REPO / "params.yaml"
DEFAULT_DATA = _REPO / "data" / "sample"
DEFAULT_WORKSPACE = _REPO / "workspace" / "demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the whole adaptation pipeline on generated synthetic data and print the result table",
        description="Generate the synthetic paired data set (if absent), train a small RGB teacher from random "
                    "weights, run inference -> pseudo-labels -> warp -> refinement, add the teacher run on the "
                    "thermal frames as a second source fused with the RGB labels, train two self-training "
                    "rounds of thermal students, and print per-class mAP: source-only vs the classic recipe "
                    "(RGB labels alone) vs fused (round 1) vs self-trained (round 2). Steps already done with "
                    "the same inputs are reused (a second run takes seconds). Nothing is downloaded.")
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, metavar="PARAMS_YAML",
                   help=f"demo parameters, same schema as params.yaml (default: {DEFAULT_PARAMS.relative_to(_REPO)}); "
                        "its data.synthetic section describes the generated data set")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                   help=f"the generated data set; (re)generated unless it holds exactly the set data.synthetic "
                        f"describes (default: {DEFAULT_DATA.relative_to(_REPO)})")
    p.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE, metavar="DIR",
                   help=f"stage outputs, caches and run records (default: {DEFAULT_WORKSPACE.relative_to(_REPO)})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one demo parameter with a dotted key, e.g. --set teacher.train.epochs=20 "
                        "(value parsed as YAML); repeatable")
    p.add_argument("--check", action="store_true", help="only validate the demo parameters and exit")
    p.set_defaults(func=run)


def demo_params(params_path: Path, data_dir: Path, registry_dir: Path,
                overrides: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """(validated PipelineParams for ``data_dir``, the ``data.synthetic`` section as a dict).

    The demo file must describe its data with ``data.synthetic``; the returned parameters use
    ``data.roots = [data_dir]`` and ``warp.registry_dir = registry_dir`` instead. ``data_dir``
    and ``registry_dir`` must exist when this is called (``DataRoot`` checks the folder).
    """
    from core.errors import InputError
    from core.overrides import apply_overrides
    from pipeline.params import SyntheticData, load_params, read_params_file

    raw = read_params_file(params_path)
    raw = apply_overrides(raw, overrides or [])
    data = dict(raw.get("data") or {})
    if not isinstance(data.get("synthetic"), dict) or data.get("roots"):
        raise InputError("the demo parameters must describe the generated data with data.synthetic (and no "
                         "data.roots)", f"{params_path} data", "see params.yaml")
    synthetic = SyntheticData.model_validate(data.pop("synthetic")).model_dump()
    data["roots"] = [{"path": str(data_dir.resolve()), "version": synthetic["version"]}]
    warp = dict(raw.get("warp") or {})
    warp["registry_dir"] = str(registry_dir.resolve())
    params = load_params(data={**raw, "data": data, "warp": warp})
    return params, synthetic


def ensure_data(data_dir: Path, synthetic: dict[str, Any], classes: list[str]) -> bool:
    """Generate the demo data set into ``data_dir`` unless it already holds exactly that set; True when generated.

    A folder left by an older generator version or other ``data.synthetic`` parameters is
    regenerated (logged at WARNING): the demo never runs on data other than what its parameters
    describe. The new set is written beside it and swapped in, so a failure leaves the old one.
    A folder that is not a generated set is never touched (clear error instead).
    """
    import logging
    import shutil
    import tempfile

    from core import atomic
    from core.errors import InputError
    from data.synthetic import generate, is_generated

    args = dict(seed=synthetic["seed"], rgb_size=tuple(synthetic["rgb_size"]),
                thermal_size=tuple(synthetic["thermal_size"]), night_fraction=synthetic["night_fraction"],
                night_hidden_people=synthetic["night_hidden_people"], classes=classes, version=synthetic["version"])
    if is_generated(data_dir, synthetic["n_pairs"], **args):
        return False
    if data_dir.exists() and any(data_dir.iterdir()):
        try:
            schema = str(atomic.read_json(data_dir / "homography.json").get("schema", ""))
        except (OSError, ValueError):
            schema = ""
        if not schema.startswith("rgb2thermal.synthetic/"):
            raise InputError("the demo data folder holds something other than a generated synthetic set", str(data_dir),
                             "pass another folder with --data, or move this one away")
        logging.getLogger(__name__).warning(
            "%s was generated by another generator version (%s) or with other data.synthetic parameters: "
            "regenerating it", data_dir, schema)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.", dir=data_dir.parent))
    try:
        generate(tmp / "set", synthetic["n_pairs"], **args)
        if data_dir.exists():
            data_dir.rename(tmp / "old")
        (tmp / "set").rename(data_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def write_registry(data_dir: Path, registry_dir: Path, version: str) -> Path:
    """A homography registry holding the data set's own exact homography (``homography.json``)."""
    import numpy as np

    from registration.registry import HomographyEntry, save_entry
    from core import atomic
    from core.errors import InputError

    path = data_dir / "homography.json"
    try:
        h = atomic.read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the data set's homography ({exc})", str(path),
                         "delete the folder and run the demo again to regenerate it") from None
    save_entry(registry_dir, version, HomographyEntry(
        H=np.asarray(h["H_rgb_to_thermal"], dtype=float), rgb_size=tuple(h["rgb_size"]),
        thermal_size=tuple(h["thermal_size"]), method="synthetic_known", error_px=0.0, error_kind="exact",
        notes="the synthetic generator's homography (exact by construction)"))
    return registry_dir


def refiner_description(refine: dict[str, Any]) -> str:
    """Which refiner produced the 'with refinement' column (SAM2 needs a checkpoint; none is shipped)."""
    method = refine.get("method", "auto")
    if method == "none":
        return "none (the RGB boxes as warped)"
    if method == "sam2" or (method == "auto" and refine.get("sam2_checkpoint")):
        return f"SAM2 (checkpoint {refine.get('sam2_checkpoint')})"
    return "classical Otsu refiner (no model weights; SAM2 needs a checkpoint)"


#: The demo table's rows, in reading order: the reference, each recipe, the upper bound.
SUMMARY_ROWS = ("source_only", "no_refinement", "classic", "round1", "round2", "adapted", "oracle")


def format_summary(metrics: dict[str, Any], classes: list[str], refiner: str, metric: str = "mAP_50",
                   describe: dict[str, str] | None = None) -> str:
    """One row per evaluated model (source-only, the classic recipe, each self-training round, the
    oracle), ``metric`` per class and over all classes, and the gain over source-only (all classes).

    ``metrics`` is the eval step's ``{run: {category or 'all': {metric: value}}}``; ``describe``
    says in words what each model was trained on (the eval step's ``describe`` option).
    """
    def val(run: str, cat: str) -> float | None:
        v = metrics.get(run, {}).get(cat, {}).get(metric)
        return None if v is None or v < 0 else float(v)

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    cats = [*classes, "all"]
    lines = ["| model | " + " | ".join(f"{c} {metric}" for c in cats) + " | gain over source-only (all) |",
             "|---|" + "---:|" * (len(cats) + 1)]
    base = val("source_only", "all")
    for run in [r for r in SUMMARY_ROWS if r in metrics]:
        label = run + (f": {describe[run]}" if describe and describe.get(run) else "")
        gain = val(run, "all")
        gain_s = "—" if run == "source_only" or gain is None or base is None else f"{gain - base:+.3f}"
        lines.append(f"| {label} | " + " | ".join(fmt(val(run, c)) for c in cats) + f" | {gain_s} |")
    return "\n".join([f"Thermal test split, {metric} per class. Refinement: {refiner}.", "", *lines]) + "\n"


def run(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from pipeline.executor import run_pipeline

    t0 = time.perf_counter()
    data_dir, workspace = args.data.resolve(), args.workspace.resolve()
    registry_dir = workspace / "registry"
    with tempfile.TemporaryDirectory() as tmp:   # validate everything before generating data or training
        checked, synthetic = demo_params(args.params, Path(tmp), Path(tmp), args.overrides)
    if args.check:
        print(f"{args.params}: demo parameters OK")
        return 0
    generated = ensure_data(data_dir, synthetic, list(checked.data.classes))
    print(f"data: {data_dir} ({'generated' if generated else 'present, reused'})", flush=True)
    write_registry(data_dir, registry_dir, synthetic["version"])
    params, _ = demo_params(args.params, data_dir, registry_dir, args.overrides)
    ran = write_run_params(params, workspace)
    record = run_pipeline(params, workspace, flow="demo")
    seconds = time.perf_counter() - t0
    from pipeline.plan import plan

    describe = next(s.options.get("describe") for s in plan(params) if s.kind == "eval")
    table = format_summary(record.eval_metrics(), list(params.data.classes), refiner_description(params.refine.model_dump()),
                           describe=describe)
    print()
    print(table)
    print(record.eval_metrics().get("table_markdown", ""))
    reused = [s.name for s in record.stages if s.reused]
    print(f"demo wall time: {seconds:.0f} s (run {record.run_id}; workspace {workspace}"
          + (f"; reused steps: {', '.join(reused)}" if reused else "") + ")")
    print(f"the exact parameters of this run: {ran} (the same steps, all reused: "
          f"python -m flows.adapt --params {ran} --workspace {workspace})")
    return 0


def write_run_params(params: Any, workspace: Path) -> Path:
    """Write the parameters the demo runs (data.roots and registry included, every section
    spelled out) as ``<workspace>/params.run.yaml``: pointing ``rgb2thermal run``, the Prefect flow
    or ``rgb2thermal dvc-yaml`` at it gives the very same steps, so every one of them is reused."""
    import yaml

    from core import atomic

    return atomic.write_text(workspace / "params.run.yaml",
                             "# written by `rgb2thermal demo`: the exact parameters it ran\n"
                             + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
