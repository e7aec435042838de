"""The adaptation pipeline: one plain-Python implementation that the CLI, Prefect and DVC all call.

Order (:data:`STEP_NAMES`)::

    data -> index -> teacher -> infer (RGB, adapt split) -> pseudo -> warp -> refine
         -> student (thermal, refined pseudo-labels) -> baseline (thermal, warped pseudo-labels)
         -> quality (pseudo-label quality report, when thermal adapt labels exist) -> eval

``eval`` scores on the thermal *test* split, per class, side by side: ``adapted`` (the student),
``source_only`` (the RGB teacher predicting on thermal frames) and ``no_refinement`` (the
``baseline`` student trained on warped, unrefined pseudo-labels).

Why whole-stage keys: users change one knob (a refine threshold) and expect minutes, not hours.
Every step has a *stage key* = sha256 of (its parameter sections, the *content* hashes of the
files it reads, the model fingerprints it uses). Its outputs live in
``<workspace>/stages/<name>/`` with a marker ``stage.json`` holding the key, written last
(atomically); a step whose key equals the marker's, and whose outputs all exist, is skipped as a
whole (``reused``). A run killed mid-step leaves no marker for that step, so the next run
redoes exactly that step: resume-after-kill comes for free. Keys are content hashes, never
paths or mtimes, so a step re-runs only when what it reads changed: after a refine threshold
change ``infer``/``pseudo``/``warp`` are reused and ``refine`` re-runs (its per-image SAM2/Otsu
cache answers every image), and ``student``/``eval`` re-run because the refined labels changed.
Below whole-stage keys, the per-image caches of ``infer`` and ``refine`` live in
``<workspace>/cache/<stage>/``: after adding images only the new images are inferred/refined.
Steps that read image *pixels* also key on the dataset fingerprint (``data`` output), so an
image edited in place is noticed although the COCO files listing it are unchanged.

Each run holds ``workspace_lock`` and writes a :class:`tasks.runs.RunRecord` (updated after every
step, so a killed run shows how far it got). The Prefect flow (``flows/adapt.py``) runs the very
same :class:`Step` list through :func:`execute_step`, one Prefect task per step.

Boxes in every file are COCO ``xywh`` pixels (see ``tasks.coco``); nothing is converted here.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import atomic
from tasks.errors import InputError
from tasks.hashing import HashMemo, file_sha256, json_sha256
from tasks.pipeline_params import PipelineParams
from tasks.runs import (RunRecord, StageRecord, content_fingerprint, dataset_fingerprint, git_revision, new_run_id,
                        now, save_record)
from tasks.workspace_lock import workspace_lock

log = logging.getLogger(__name__)

#: Bumped when a step's outputs change meaning: every stage key changes, nothing stale is reused.
PIPELINE_SCHEMA = "rgb2thermal.pipeline/1"
MARKER = "stage.json"


@dataclass
class StepOutput:
    """What a finished step produced: files by role (absolute paths) and facts for the record."""

    files: dict[str, Path]
    cache_hits: int = 0
    cache_misses: int = 0
    info: dict[str, Any] = field(default_factory=dict)   # JSON-able: models, counts, metrics, warnings
    reused: bool = False
    seconds: float = 0.0
    key: str = ""


@dataclass
class PipelineContext:
    """One run: parameters, workspace, the run record, and the outputs of the steps done so far."""

    params: PipelineParams
    workspace: Path
    record: RunRecord
    outputs: dict[str, StepOutput] = field(default_factory=dict)
    current: str = ""            # the step being executed (named in the record's error when it fails)
    memo: HashMemo = field(default_factory=HashMemo)   # file hashes by stat (see tasks.hashing)

    def stage_dir(self, name: str) -> Path:
        return self.workspace / "stages" / name

    def cache_dir(self, name: str) -> Path:
        return self.workspace / "cache" / name

    def file(self, step: str, role: str) -> Path:
        try:
            return self.outputs[step].files[role]
        except KeyError:
            raise InputError(f"step '{step}' has no output '{role}' in this run", str(self.workspace),
                             f"run the steps before it first (order: {', '.join(STEP_NAMES)})") from None


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    - ``sections``: parameter sections in its key; ``inputs(ctx)``: role -> file whose *content*
      is in its key; ``extra(ctx)``: more JSON-able key material (e.g. model fingerprints).
    - ``run(ctx, out_dir)``: do the work, writing only under ``out_dir``; return its outputs.
    - ``enabled(params)``: False skips the step entirely (e.g. no baseline requested).
    """

    name: str
    sections: tuple[str, ...]
    inputs: Callable[[PipelineContext], dict[str, Path]]
    run: Callable[[PipelineContext, Path], StepOutput]
    extra: Callable[[PipelineContext], Any] = lambda ctx: None
    enabled: Callable[[PipelineParams], bool] = lambda p: True
    retries: int = 0   # for the Prefect task wrapper: transient failures only (I/O), never for training


# ---------------------------------------------------------------------------------------------
# stage keys and markers
# ---------------------------------------------------------------------------------------------
def stage_key(ctx: PipelineContext, step: Step) -> str:
    """sha256 of the step's parameter sections, input file contents and extra key material."""
    inputs = step.inputs(ctx)
    missing = [str(p) for p in inputs.values() if not Path(p).is_file()]
    if missing:
        raise InputError(f"step '{step.name}' input files are missing: {missing[:3]}", str(ctx.workspace),
                         "re-run the earlier steps (rgb2thermal run)")
    return json_sha256({"schema": PIPELINE_SCHEMA, "step": step.name,
                        "params": {s: ctx.params.section(s) for s in step.sections},
                        "inputs": {role: ctx.memo.sha256(p) for role, p in sorted(inputs.items())},
                        "extra": step.extra(ctx)})


def _read_marker(stage_dir: Path) -> dict | None:
    try:
        m = atomic.read_json(stage_dir / MARKER)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and "key" in m and "files" in m else None


def _reusable(stage_dir: Path, key: str) -> StepOutput | None:
    """The stored outputs when the marker's key is ``key`` and every output file still exists."""
    m = _read_marker(stage_dir)
    if m is None or m["key"] != key:
        return None
    files = {role: stage_dir / rel for role, rel in m["files"].items()}
    if not all(p.exists() for p in files.values()):
        log.warning("stage %s: marker matches but outputs are missing; re-running it", stage_dir.name)
        return None
    return StepOutput(files=files, info=m.get("info", {}), reused=True, key=key)


def _write_marker(stage_dir: Path, key: str, out: StepOutput) -> None:
    files = {}
    for role, p in out.files.items():
        try:
            files[role] = str(Path(p).resolve().relative_to(stage_dir.resolve()))
        except ValueError:
            raise RuntimeError(f"step {stage_dir.name} wrote {p} outside its stage folder") from None
    atomic.write_json(stage_dir / MARKER, {"schema": PIPELINE_SCHEMA, "key": key, "files": files,
                                           "cache_hits": out.cache_hits, "cache_misses": out.cache_misses,
                                           "seconds": round(out.seconds, 3), "info": out.info, "finished": now()})


def execute_step(ctx: PipelineContext, step: Step) -> StepOutput:
    """Run ``step`` unless its stored outputs are current; record it in the run record either way."""
    t0 = time.perf_counter()
    ctx.current = step.name
    sdir = ctx.stage_dir(step.name)
    key = stage_key(ctx, step)
    out = _reusable(sdir, key)
    if out is None:
        (sdir / MARKER).unlink(missing_ok=True)       # no marker = not done (a kill from here on redoes it)
        if sdir.exists():
            shutil.rmtree(sdir)
        sdir.mkdir(parents=True)
        log.info("step %s: running", step.name)
        out = step.run(ctx, sdir)
        out.key = key
        out.seconds = time.perf_counter() - t0
        _write_marker(sdir, key, out)
    else:
        out.seconds = time.perf_counter() - t0
        log.info("step %s: reused (inputs and parameters unchanged)", step.name)
    ctx.outputs[step.name] = out
    ctx.memo.save()
    _note(ctx, step.name, out)
    return out


def _note(ctx: PipelineContext, name: str, out: StepOutput) -> None:
    rec = ctx.record
    rec.stages = [s for s in rec.stages if s.name != name]
    rec.stages.append(StageRecord(name=name, seconds=round(out.seconds, 3), cache_hits=out.cache_hits,
                                  cache_misses=out.cache_misses, reused=out.reused,
                                  outputs={k: str(v) for k, v in out.files.items()}))
    _merge_info(rec, name, out.info)
    save_record(ctx.workspace, rec)


def _merge_info(rec: RunRecord, name: str, info: dict[str, Any]) -> None:
    """Carry a step's datasets, models, fallbacks and metrics into the run record."""
    rec.models.update(info.get("models", {}))
    rec.datasets.update(info.get("datasets", {}))
    for fb in info.get("fallbacks", []):
        line = f"{name}: {fb}"
        if line not in rec.fallbacks:
            rec.fallbacks.append(line)
    if "metrics" in info:
        rec.metrics = info["metrics"]


# ---------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------
def _data_extra(ctx: PipelineContext) -> Any:
    # the *content* of user folders is part of the key (not their DVC md5, which is only as fresh as
    # the last `dvc add`); the memo makes this a stat per unchanged file
    return {r.version: content_fingerprint(r.path, ctx.memo) for r in ctx.params.data.roots}


def _run_data(ctx: PipelineContext, out: Path) -> StepOutput:
    d = ctx.params.data
    roots: dict[str, str] = {}
    files: dict[str, Path] = {}
    if d.synthetic is not None:
        from data.synthetic import generate
        from registration.registry import HomographyEntry, save_entry

        s = d.synthetic
        info = generate(out / s.version, s.n_pairs, seed=s.seed, rgb_size=s.rgb_size, thermal_size=s.thermal_size,
                        night_fraction=s.night_fraction, classes=d.classes, version=s.version)
        save_entry(out / "registry", s.version, HomographyEntry(
            H=info.homography, rgb_size=info.rgb_size, thermal_size=info.thermal_size, method="synthetic_known",
            error_px=0.0, error_kind="exact", notes="the generator's homography (exact by construction)"))
        roots[s.version] = str(out / s.version)
        files["registry"] = out / "registry"
    else:
        roots = {r.version: str(r.path) for r in d.roots}
    content = {v: content_fingerprint(p, ctx.memo) for v, p in roots.items()}
    fps = {v: dataset_fingerprint(p, content=content[v]) for v, p in roots.items()}
    files["datasets"] = atomic.write_json(out / "datasets.json", {
        v: {"path": roots[v], "fingerprint": fps[v], "content": content[v]} for v in sorted(roots)})
    return StepOutput(files=files, info={"datasets": fps})


def _split_coco(ds: dict | None, split: str) -> dict | None:
    if ds is None:
        return None
    keep = {im["id"] for im in ds["images"] if im.get("split") == split}
    out = dict(ds)
    out["images"] = [im for im in ds["images"] if im["id"] in keep]
    out["annotations"] = [a for a in ds["annotations"] if a["image_id"] in keep]
    return out


def _run_index(ctx: PipelineContext, out: Path) -> StepOutput:
    from data.adapters.folder import build_index
    from data.merge import merge_indexes
    from tasks.coco import save_dataset

    d = ctx.params.data
    roots = atomic.read_json(ctx.file("data", "datasets"))
    built = [build_index(info["path"], version, out / "versions", classes=d.classes, progress=False)
             for version, info in roots.items()]
    idx = merge_indexes(built, out / "index.json") if len(built) > 1 else built[0]
    files = {"index": Path(idx.path)}
    rgb, thermal = idx.load_labels("rgb"), idx.load_labels("thermal")
    if rgb is None:
        raise InputError("the dataset has no RGB labels", str(roots), "the pipeline needs labelled RGB images "
                         "(teacher training) or at least RGB images; add labels_rgb/")
    splits = {im.get("split") for im in rgb["images"]}
    for want in (d.adapt_split, d.test_split):
        if want not in splits:
            raise InputError(f"no image has split '{want}' (splits present: {sorted(s for s in splits if s)})",
                             str(idx.path), "set data.adapt_split/data.test_split or fix split.csv")
    files["rgb_adapt"] = save_dataset(out / "rgb_adapt.json", _split_coco(rgb, d.adapt_split))
    if thermal is None:
        raise InputError("the dataset has no thermal labels for the test split", str(idx.path),
                         "add labels_thermal/ (test split at least): evaluation needs thermal ground truth")
    files["thermal_test"] = save_dataset(out / "thermal_test.json", _split_coco(thermal, d.test_split))
    adapt_th = _split_coco(thermal, d.adapt_split)
    if adapt_th is not None and adapt_th["annotations"]:
        files["thermal_adapt"] = save_dataset(out / "thermal_adapt.json", adapt_th)
    counts = {"pairs": len(idx.pairs), "adapt": len(idx.select(split=d.adapt_split)),
              "test": len(idx.select(split=d.test_split))}
    return StepOutput(files=files, info={"counts": counts})


def _teacher_inputs(ctx: PipelineContext) -> dict[str, Path]:
    t = ctx.params.teacher
    if t.train is None:
        files = {}
        if t.checkpoint is not None:
            files["checkpoint"] = t.checkpoint
        if t.config and Path(t.config).is_file():
            files["config"] = Path(t.config)
        return files
    return {"rgb_adapt": ctx.file("index", "rgb_adapt"), "datasets": ctx.file("data", "datasets")}


def _train(ctx: PipelineContext, out: Path, fields: dict[str, Any], ann_file: Path, load_from: Path | None) -> Any:
    from tasks.train import train
    from tasks.train_spec import spec_from_dict

    spec = spec_from_dict({**fields, "classes": list(ctx.params.data.classes),
                           "train": {"ann_file": str(ann_file), "img_root": "/"},
                           "work_dir": str(out / "train"),
                           **({"load_from": str(load_from)} if load_from is not None else {})},
                          f"params ({out.name})")
    return train(spec)


def _trained_outputs(result: Any, role: str, out: Path) -> StepOutput:
    if result.slim_checkpoint is None:
        raise RuntimeError(f"{role} training produced no checkpoint (see {result.run_dir})")
    ck = Path(result.slim_checkpoint)
    return StepOutput(files={"config": Path(result.config_path), "checkpoint": ck,
                             "train_result": Path(result.run_dir) / "train_result.json"},
                      info={"models": {role: f"sha256:{file_sha256(ck)}"}, "fallbacks": list(result.warnings),
                            "train": {"epochs_run": result.epochs_run, "timings": result.timings}})


def _run_teacher(ctx: PipelineContext, out: Path) -> StepOutput:
    t = ctx.params.teacher
    if t.train is None:
        ck = str(t.checkpoint) if t.checkpoint is not None else None
        desc = {"config": t.config, "checkpoint": ck,
                "checkpoint_sha256": file_sha256(t.checkpoint) if t.checkpoint is not None else None}
        fallbacks = [] if ck else ["the teacher has no checkpoint: RANDOM weights (its pseudo-labels are meaningless)"]
        files = {"teacher": atomic.write_json(out / "teacher.json", desc)}
        fp = f"sha256:{desc['checkpoint_sha256']}" if ck else "random-init"
        return StepOutput(files=files, info={"models": {"teacher": fp}, "fallbacks": fallbacks})
    result = _train(ctx, out, ctx.params.teacher_train_fields(), ctx.file("index", "rgb_adapt"), None)
    return _trained_outputs(result, "teacher", out)


def teacher_model(ctx: PipelineContext) -> tuple[str, str | None]:
    """(config, checkpoint) of the teacher this run uses."""
    out = ctx.outputs["teacher"]
    if "teacher" in out.files:
        d = atomic.read_json(out.files["teacher"])
        return d["config"], d["checkpoint"]
    return str(out.files["config"]), str(out.files["checkpoint"])


def _model_inputs(ctx: PipelineContext, step: str) -> dict[str, Path]:
    out = ctx.outputs[step]
    return {f"{step}_{k}": v for k, v in out.files.items() if k in ("teacher", "checkpoint")}


def _run_infer(ctx: PipelineContext, out: Path) -> StepOutput:
    from tasks.infer import run_infer

    config, ck = teacher_model(ctx)
    rep = run_infer(ctx.file("index", "rgb_adapt"), out / "infer.json", ctx.params.infer_params(config, ck),
                    cache_dir=ctx.cache_dir("infer"), hash_memo=ctx.memo)
    return _from_report(rep, {"coco": out / "infer.json"})


def _from_report(rep: Any, files: dict[str, Path]) -> StepOutput:
    from tasks.stage_report import report_path

    files = {**files, "report": report_path(files["coco"])}
    return StepOutput(files=files, cache_hits=rep.cache_hits, cache_misses=rep.cache_misses,
                      info={"counts": rep.counts, "dropped": rep.dropped, "fallbacks": list(rep.fallbacks),
                            "skipped_images": len(rep.skipped_images)})


def _run_pseudo(ctx: PipelineContext, out: Path) -> StepOutput:
    from tasks.pseudo import run_pseudo

    rep = run_pseudo(ctx.file("infer", "coco"), out / "pseudo.json", ctx.params.pseudo_params())
    return _from_report(rep, {"coco": out / "pseudo.json"})


def _registry_dir(ctx: PipelineContext) -> Path | None:
    if ctx.params.warp.get("registry_dir") is not None:
        return Path(ctx.params.warp["registry_dir"])
    return ctx.outputs["data"].files.get("registry")


def _warp_inputs(ctx: PipelineContext) -> dict[str, Path]:
    from registration.registry import DEFAULT_REGISTRY_DIR

    reg = _registry_dir(ctx) or DEFAULT_REGISTRY_DIR
    files = {"pseudo": ctx.file("pseudo", "coco"), "index": ctx.file("index", "index")}
    files.update({f"registry:{p.name}": p for p in sorted(Path(reg).glob("*.yaml"))})
    return files


def _run_warp(ctx: PipelineContext, out: Path) -> StepOutput:
    from tasks.warp import run_warp

    rep = run_warp(ctx.file("pseudo", "coco"), out / "warped.json", ctx.params.warp_params(_registry_dir(ctx)),
                   index=ctx.file("index", "index"))
    return _from_report(rep, {"coco": out / "warped.json"})


def _refine_extra(ctx: PipelineContext) -> Any:
    ck = ctx.params.refine.get("sam2_checkpoint")
    return {"sam2_checkpoint": ctx.memo.sha256(ck) if ck else None}


def _run_refine(ctx: PipelineContext, out: Path) -> StepOutput:
    from tasks.refine import run_refine

    rep = run_refine(ctx.file("warp", "coco"), out / "refined.json", ctx.params.refine_params(),
                     index=ctx.file("index", "index"), cache_dir=ctx.cache_dir("refine"), hash_memo=ctx.memo)
    return _from_report(rep, {"coco": out / "refined.json"})


def _student_init(ctx: PipelineContext) -> Path | None:
    if not ctx.params.student.init_from_teacher:
        return None
    _, ck = teacher_model(ctx)
    return Path(ck) if ck else None


def _student_inputs(labels_step: str) -> Callable[[PipelineContext], dict[str, Path]]:
    def inputs(ctx: PipelineContext) -> dict[str, Path]:
        files = {"labels": ctx.file(labels_step, "coco"), "datasets": ctx.file("data", "datasets")}
        init = _student_init(ctx)
        if init is not None:
            files["init"] = init
        return files
    return inputs


def _student_run(labels_step: str, role: str) -> Callable[[PipelineContext, Path], StepOutput]:
    def run(ctx: PipelineContext, out: Path) -> StepOutput:
        labels = atomic.read_json(ctx.file(labels_step, "coco"))
        if not labels["annotations"]:
            raise InputError(f"no pseudo-labels survived to train the {role} on ({len(labels['images'])} images, "
                             "0 boxes)", str(ctx.file(labels_step, "coco")),
                             "lower pseudo.score_threshold, check the teacher (train it longer), or look at the "
                             "infer/pseudo/warp reports' dropped counts")
        result = _train(ctx, out, ctx.params.student_train_fields(), ctx.file(labels_step, "coco"), _student_init(ctx))
        return _trained_outputs(result, role, out)
    return run


def _quality_inputs(ctx: PipelineContext) -> dict[str, Path]:
    idx = ctx.outputs["index"].files
    files = {"rgb_gt": idx["rgb_adapt"], "pseudo": ctx.file("pseudo", "coco"), "warped": ctx.file("warp", "coco"),
             "refined": ctx.file("refine", "coco")}
    if "thermal_adapt" in idx:
        files["thermal_gt"] = idx["thermal_adapt"]
    return files


def _run_quality(ctx: PipelineContext, out: Path) -> StepOutput:
    """Score pseudo-labels stage by stage against thermal labels of the adapt split, where they
    exist (synthetic data, benchmarks). Without them the report says so and scores nothing."""
    from tasks.report import ReportInputs, ReportParams, run_report

    f = _quality_inputs(ctx)
    if "thermal_gt" not in f:
        note = "no thermal labels on the adapt split: pseudo-label quality cannot be measured"
        md = atomic.write_text(out / "quality" / "quality.md", f"# Pseudo-label quality\n\n{note}.\n")
        return StepOutput(files={"markdown": md}, info={"note": note})
    rep = run_report(ReportInputs(thermal_gt=f["thermal_gt"], rgb_gt=f["rgb_gt"], pseudo=f["pseudo"],
                                  warped=f["warped"], refined=f["refined"]),
                     out / "quality", ReportParams(n_overlays=2), index=ctx.file("index", "index"))
    return StepOutput(files={"markdown": Path(rep.outputs["markdown"]), "json": Path(rep.outputs["json"])},
                      info={"counts": rep.counts})


def _eval_inputs(ctx: PipelineContext) -> dict[str, Path]:
    files = {"gt": ctx.file("index", "thermal_test"), "datasets": ctx.file("data", "datasets"),
             "adapted": ctx.file("student", "checkpoint")}
    if "no_refinement" in ctx.params.eval.baselines:
        files["no_refinement"] = ctx.file("baseline", "checkpoint")
    files.update(_model_inputs(ctx, "teacher"))
    return files


def _run_eval(ctx: PipelineContext, out: Path) -> StepOutput:
    from tasks.detector import load_detector, predict_dataset
    from tasks.evaluate import evaluate_runs, format_markdown

    gt = ctx.file("index", "thermal_test")
    ev = ctx.params.eval
    models: dict[str, tuple[str, str | None]] = {
        "adapted": (str(ctx.file("student", "config")), str(ctx.file("student", "checkpoint")))}
    if "no_refinement" in ev.baselines:
        models["no_refinement"] = (str(ctx.file("baseline", "config")), str(ctx.file("baseline", "checkpoint")))
    if "source_only" in ev.baselines:
        models["source_only"] = teacher_model(ctx)
    preds: dict[str, Path] = {}
    for name, (config, ck) in models.items():
        det = load_detector(config, ck, device=_device(ctx))
        preds[name] = atomic.write_json(out / f"predictions_{name}.json",
                                        predict_dataset(det, gt, "/", batch_size=ev.batch_size, progress=False),
                                        indent=None)
    report = evaluate_runs(gt, preds)
    md = format_markdown(report, ev.metrics)
    metrics: dict[str, Any] = {r.name: {**r.per_category, "all": r.overall} for r in report.runs}
    metrics["table_markdown"] = md
    files = {"table": atomic.write_text(out / "eval.md", md), "json": atomic.write_json(out / "eval.json", report.to_json()),
             "metrics": atomic.write_json(out / "metrics.json", {
                 name: {cat: {m: vals.get(m) for m in ev.metrics} for cat, vals in per.items()}
                 for name, per in metrics.items() if name != "table_markdown"}),
             **{f"predictions_{k}": v for k, v in preds.items()}}
    return StepOutput(files=files, info={"metrics": metrics})


def _device(ctx: PipelineContext) -> str:
    return str(ctx.params.student.train.get("device", "auto"))


def _has_baseline(p: PipelineParams) -> bool:
    return "no_refinement" in p.eval.baselines


def _datasets(ctx: PipelineContext) -> dict[str, Path]:
    return {"datasets": ctx.file("data", "datasets")}


STEPS: tuple[Step, ...] = (
    Step("data", ("data",), lambda ctx: {}, _run_data, extra=_data_extra),
    Step("index", ("data",), _datasets, _run_index, retries=1),
    Step("teacher", ("teacher", "data"), _teacher_inputs, _run_teacher),
    Step("infer", ("infer",), lambda ctx: {"images": ctx.file("index", "rgb_adapt"), **_datasets(ctx),
                                           **_model_inputs(ctx, "teacher")}, _run_infer, retries=1),
    Step("pseudo", ("pseudo", "data"), lambda ctx: {"infer": ctx.file("infer", "coco")}, _run_pseudo, retries=1),
    Step("warp", ("warp",), _warp_inputs, _run_warp, retries=1),
    Step("refine", ("refine",), lambda ctx: {"warped": ctx.file("warp", "coco"), "index": ctx.file("index", "index"),
                                             **_datasets(ctx)}, _run_refine, extra=_refine_extra, retries=1),
    Step("student", ("student", "data"), _student_inputs("refine"), _student_run("refine", "student")),
    Step("baseline", ("student", "data"), _student_inputs("warp"), _student_run("warp", "baseline"),
         enabled=_has_baseline),
    Step("quality", (), _quality_inputs, _run_quality, retries=1),
    Step("eval", ("eval",), _eval_inputs, _run_eval),
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


def steps_for(params: PipelineParams) -> list[Step]:
    """The steps this parameter set runs, in order (both doors iterate this list)."""
    return [s for s in STEPS if s.enabled(params)]


def get_step(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise InputError(f"unknown pipeline step '{name}'", "--stage", f"use one of {list(STEP_NAMES)}")


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def workspace_hash_memo(workspace: str | Path) -> HashMemo:
    """The workspace's file-hash memo (``cache/file_hashes.json``), shared by runs and nightly checks."""
    return HashMemo(Path(workspace) / "cache" / "file_hashes.json")


@contextlib.contextmanager
def pipeline_run(params: PipelineParams, workspace: str | Path, flow: str = "adapt",
                 lock_wait_seconds: float = 0.0) -> Iterator[PipelineContext]:
    """Hold the workspace lock and keep the run record for the block (status, error, finish time)."""
    ws = Path(workspace).resolve()
    record = RunRecord(run_id=new_run_id(flow), flow=flow, started=now(), git_revision=git_revision(),
                       params=params.model_dump(mode="json"))
    with workspace_lock(ws, record.run_id, wait_seconds=lock_wait_seconds):
        ctx = PipelineContext(params=params, workspace=ws, record=record, memo=workspace_hash_memo(ws))
        save_record(ws, record)
        try:
            yield ctx
            record.status = "succeeded"
        except BaseException as exc:
            record.status = "failed"
            record.error = f"step {ctx.current or '(none)'}: {exc.__class__.__name__}: {exc}"
            raise
        finally:
            ctx.memo.save()
            record.finished = now()
            save_record(ws, record)


def load_done_step(ctx: PipelineContext, step: Step) -> StepOutput:
    """An earlier step's stored outputs, after checking they are current (single-step runs)."""
    key = stage_key(ctx, step)
    out = _reusable(ctx.stage_dir(step.name), key)
    if out is None:
        raise InputError(f"step '{step.name}' has not run with the current inputs and parameters",
                         str(ctx.stage_dir(step.name)), f"run it first: rgb2thermal run --stage {step.name}")
    ctx.outputs[step.name] = out
    # a single-step (DVC) run's record still names every dataset and model the step depends on
    _merge_info(ctx.record, step.name, {k: v for k, v in out.info.items() if k in ("datasets", "models")})
    return out


def run_pipeline(params: PipelineParams, workspace: str | Path, *, flow: str = "adapt",
                 only: str | None = None, until: str | None = None, lock_wait_seconds: float = 0.0) -> RunRecord:
    """Run every step (each skipped when current) and return the finished run record.

    ``only``: run that one step after checking that the steps before it are current (the DVC
    door). ``until``: stop after that step, e.g. ``until="refine"`` makes the thermal
    pseudo-labels without training anything on them.
    """
    steps = steps_for(params)
    for name, opt in ((only, "--stage"), (until, "--until")):
        if name is not None and get_step(name) not in steps:
            raise InputError(f"step '{name}' is disabled by the parameters", opt, "enable it (eval.baselines)")
    if only is not None and until is not None:
        raise InputError("--stage and --until exclude each other", f"--stage {only} --until {until}", "give one of them")
    last = only or until
    with pipeline_run(params, workspace, flow, lock_wait_seconds) as ctx:
        for step in steps:
            if only is not None and step.name != only:
                load_done_step(ctx, step)
                continue
            execute_step(ctx, step)
            if step.name == last:
                break
    return ctx.record
