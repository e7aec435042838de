"""Incremental re-runs of the whole pipeline at 10k images: no change, and +1 % new images.

Why: users re-run after every small change and expect the tool to notice "nothing changed"
in seconds and to pay only for what is new. Targets (issue 6): a no-change re-run over 10k
generated images takes <= 5 s; adding 1 % new images costs <= 5 % of a full run.

Set-up (all real components): ``--pairs`` generated pairs (160x128 RGB, 128x96 thermal, a
user-style folder in ``data.roots``), the shared COCO YOLOX-nano teacher
(``../shared/models/yolox-nano-coco``, user-supplied config + checkpoint, no training), the
classical refiner, two students (1 epoch at 96x96, batch 32: training is not what this measures),
evaluation of three models. Every step runs in ``rgb2thermal run`` processes, as a user runs them.

Phases, in one workspace:

1. ``full``: a cold run of every step (empty workspace and caches).
2. ``no change``: ``rgb2thermal run`` again as a fresh process (wall time, Python start
   included), ``--repeats`` times; median.
3. ``+1 %``: ``pairs/100`` new pairs are generated into the folder, then the label-transfer
   steps run (``--until refine``: data -> index -> teacher -> infer -> pseudo -> warp -> refine);
   repeated ``--repeats`` times (each adds another 1 %); median cost against the same steps of
   the full run. The students and eval re-run after new data by design (new labels, new model),
   so the whole-pipeline cost of one increment is reported too, as measured, without a target.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core import atomic

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NANO = REPO.parent / "shared" / "models" / "yolox-nano-coco"
SIZES = {"rgb_size": (160, 128), "thermal_size": (128, 96)}
LABEL_STEPS = ("data", "index", "teacher", "infer", "pseudo", "warp", "refine")


def _generate(root: Path, n: int, start: int) -> float:
    from data.synthetic import generate
    from registration.registry import HomographyEntry, save_entry

    t0 = time.perf_counter()
    info = generate(root / "data", n, seed=5, start_index=start, progress=False, workers=os.cpu_count() or 1, **SIZES)
    save_entry(root / "registry", "bench", HomographyEntry(H=info.homography, rgb_size=info.rgb_size,
                                                           thermal_size=info.thermal_size, method="synthetic_known",
                                                           error_px=0.0))
    return time.perf_counter() - t0


def _params(root: Path) -> dict[str, Any]:
    train = {"device": "cpu", "input_size": [96, 96], "batch_size": 32, "epochs": 1, "num_workers": 0,
             "val_interval": 100, "warmup_epochs": 0, "freeze_bn": True, "frozen_stages": 0, "augment": ["flip"]}
    return {"data": {"roots": [{"path": str(root / "data"), "version": "bench"}]},
            "teacher": {"config": str(NANO / "yolox_nano_coco.py"), "checkpoint": str(NANO / "yolox_nano_coco.pth")},
            "infer": {"device": "cpu", "batch_size": 16, "min_score": 0.05, "max_per_image": 100},
            "pseudo": {"score_threshold": 0.3, "vehicles_as_car": True},
            "warp": {"registry_dir": str(root / "registry")},
            "refine": {"method": "classical"},
            "student": {"train": train},
            "eval": {"batch_size": 16}}


def _cli(params_file: Path, ws: Path, *extra: str) -> tuple[float, dict]:
    """One ``rgb2thermal run`` process; (wall seconds, its run record)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rgb2thermal_cli.main", "run", "--params", str(params_file),
                           "--workspace", str(ws), *extra], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"rgb2thermal run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    records = sorted((ws / "runs").glob("*/record.json"))
    return wall, atomic.read_json(records[-1])


def _stage_seconds(record: dict, names: tuple[str, ...] | None = None) -> float:
    return sum(s["seconds"] for s in record["stages"] if names is None or s["name"] in names)


def _stages(record: dict) -> dict[str, dict]:
    return {s["name"]: s for s in record["stages"]}


def run(work: Path, pairs: int, repeats: int) -> dict[str, Any]:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"pairs": pairs, "repeats": repeats, "cpus": os.cpu_count()}
    data_dir = work / "data"
    if not (data_dir / "split.csv").is_file():
        res["generate_seconds"] = round(_generate(work, pairs, 0), 1)
    params_file = atomic.write_text(work / "params.yaml", yaml.safe_dump(_params(work), sort_keys=False))
    ws = work / "ws"

    wall, full = _cli(params_file, ws)
    res["full"] = {"wall": wall, "stages": {s["name"]: s["seconds"] for s in full["stages"]},
                   "label_steps_seconds": _stage_seconds(full, LABEL_STEPS)}
    print(f"full run: {wall:.1f}s", flush=True)

    nochange = []
    for _ in range(repeats):
        wall, rec = _cli(params_file, ws)
        assert all(s["reused"] for s in rec["stages"]), "an unchanged re-run re-ran a step"
        nochange.append({"wall": wall, "in_process": _stage_seconds(rec),
                         "stages": {s["name"]: s["seconds"] for s in rec["stages"]}})
    res["no_change"] = nochange
    print(f"no-change re-runs: {[round(r['wall'], 2) for r in nochange]}", flush=True)

    n_total = pairs
    increments = []
    for _ in range(repeats):
        add = max(1, pairs // 100)
        gen = _generate(work, add, n_total)
        n_total += add
        wall, rec = _cli(params_file, ws, "--until", "refine")
        st = _stages(rec)
        increments.append({"added": add, "generate_seconds": gen, "wall": wall,
                           "label_steps_seconds": _stage_seconds(rec, LABEL_STEPS),
                           "stages": {k: v["seconds"] for k, v in st.items()},
                           "infer_hits": st["infer"]["cache_hits"], "infer_misses": st["infer"]["cache_misses"],
                           "refine_hits": st["refine"]["cache_hits"], "refine_misses": st["refine"]["cache_misses"]})
        print(f"+{add} pairs: label steps {increments[-1]['label_steps_seconds']:.1f}s", flush=True)
    res["increments"] = increments
    wall, rec = _cli(params_file, ws)
    res["whole_after_increments"] = {"wall": wall, "stages": {s["name"]: s["seconds"] for s in rec["stages"]},
                                     "reused": [s["name"] for s in rec["stages"] if s["reused"]]}
    res["eval_rerun"] = _eval_rerun(params_file, ws)
    return res


def _eval_rerun(params_file: Path, ws: Path) -> dict[str, Any]:
    """Eval re-keyed by a metric list change while every model is unchanged: only ``eval`` runs, and
    its inference is all per-image cache hits (issue 24: re-evaluating costs seconds)."""
    wall, rec = _cli(params_file, ws, "--set", "eval.metrics=[mAP, mAP_50, mAP_75]")
    st = _stages(rec)
    ran = [s["name"] for s in rec["stages"] if not s["reused"]]
    assert ran == ["eval"], f"only eval should re-run, ran {ran}"
    out = {"wall": wall, "eval_seconds": st["eval"]["seconds"], "ran": ran}
    for key in ("cache_hits", "cache_misses"):
        out[key] = st["eval"].get(key)
    print(f"eval re-run (models unchanged): {out}", flush=True)
    return out


def to_markdown(res: dict[str, Any]) -> str:
    full = res["full"]
    nc_wall = statistics.median(r["wall"] for r in res["no_change"])
    nc_inproc = statistics.median(r["in_process"] for r in res["no_change"])
    inc = res["increments"]
    inc_label = statistics.median(r["label_steps_seconds"] for r in inc)
    ratio = inc_label / full["label_steps_seconds"]
    whole = res["whole_after_increments"]
    lines = [
        "## Pipeline: incremental re-runs at scale (`benchmarks/pipeline_incremental.py`)", "",
        f"Machine: {res['cpus']} CPU cores, no GPU. {res['pairs']} generated pairs (160x128 RGB / 128x96 thermal) "
        "in a user-style folder; teacher = the shared COCO YOLOX-nano (config + checkpoint, not trained here); "
        "classical refiner; two students 1 epoch at 96x96; eval of three models on the thermal test split. "
        "Every number below is from one run of this benchmark; medians over "
        f"{res['repeats']} repeats.", "",
        "| measurement | seconds | target | met |", "|---|---:|---|---|",
        f"| full cold run, all steps (`rgb2thermal run`, wall) | {full['wall']:.1f} | | |",
        f"| of which label-transfer steps (data … refine) | {full['label_steps_seconds']:.1f} | | |",
        f"| no-change re-run, `rgb2thermal run` process wall (median) | {nc_wall:.2f} | <= 5 s | "
        f"{'yes' if nc_wall <= 5 else 'no'} |",
        f"| no-change re-run, inside the pipeline (median) | {nc_inproc:.2f} | | |",
        f"| +1 % pairs ({inc[0]['added']}), label-transfer steps (median) | {inc_label:.2f} | "
        f"<= 5 % of full = {0.05 * full['label_steps_seconds']:.1f} s | {'yes' if ratio <= 0.05 else 'no'} "
        f"({100 * ratio:.1f} %) |",
        f"| whole pipeline after the increments (students + eval re-run by design) | {whole['wall']:.1f} | "
        f"({100 * whole['wall'] / full['wall']:.0f} % of full) | |", "",
        "Per step (seconds): full run / no-change re-run (median) / one +1 % increment (median):", "",
        "| step | full | no change | +1 % |", "|---|---:|---:|---:|",
    ]
    for name, secs in full["stages"].items():
        ncs = statistics.median(r["stages"].get(name, 0.0) for r in res["no_change"])
        incs = [r["stages"][name] for r in inc if name in r["stages"]]
        lines.append(f"| {name} | {secs:.2f} | {ncs:.3f} | {statistics.median(incs):.2f} |" if incs
                     else f"| {name} | {secs:.2f} | {ncs:.3f} | — |")
    lines += ["", f"Each increment inferred and refined only the new images: infer cache hits/misses "
                  f"{[(r['infer_hits'], r['infer_misses']) for r in inc]}, refine "
                  f"{[(r['refine_hits'], r['refine_misses']) for r in inc]}.", ""]
    ev = res.get("eval_rerun")
    if ev:
        lines += [f"Eval re-run with every model unchanged (`--set eval.metrics=[mAP, mAP_50, mAP_75]` re-keys only "
                  f"`eval`): the eval step {ev['eval_seconds']:.2f} s, the `rgb2thermal run` process {ev['wall']:.1f} s "
                  f"(steps that ran: {ev['ran']}; inference cache hits/misses: {ev['cache_hits']}/{ev['cache_misses']}).",
                  ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_incremental", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=10_000, help="generated pairs in the dataset (default 10000)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the no-change and +1 %% phases (default 3)")
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "bench_pipeline_incremental",
                    help="working folder (data is generated once and kept; the workspace is rebuilt)")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing results/")
    args = ap.parse_args(argv)
    if not (NANO / "yolox_nano_coco.pth").is_file():
        print(f"needs the shared YOLOX-nano teacher at {NANO}", file=sys.stderr)
        return 2
    import shutil

    shutil.rmtree(args.work / "ws", ignore_errors=True)
    if (args.work / "data" / "split.csv").is_file():
        shutil.rmtree(args.work / "data")            # increments of an earlier run changed it: start over
    res = run(args.work, args.pairs, args.repeats)
    md = to_markdown(res)
    print(md)
    if not args.no_write:
        atomic.write_text(HERE / "results" / "pipeline_incremental.md", md)
        atomic.write_text(HERE / "results" / "pipeline_incremental.json", json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
