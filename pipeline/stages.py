"""What each step *kind* does: thin glue from a :class:`pipeline.step.Step` to the stage
functions in :mod:`tasks` (one implementation per stage; this module only wires files).

A kind reads its inputs through ``ctx.input(step, role)`` (the upstream outputs its plan entry
names) and writes only under its own stage folder. Models travel between steps as a small
descriptor ``model.json`` (``config``, ``checkpoint``, ``checkpoint_sha256``; paths relative to
the workspace when inside it), so "the teacher" of a step is whatever model its plan entry
points at: the user's checkpoint, a trained teacher or a previous student.

Boxes in every file are COCO ``xywh`` pixels (see :mod:`core.coco`); nothing is converted here.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import atomic
from core.errors import InputError
from pipeline.step import PipelineContext, Step, StepOutput
from pipeline.runs import content_fingerprint, dataset_fingerprint

log = logging.getLogger(__name__)
Kind = Callable[[PipelineContext, Step, Path], StepOutput]


def run_kind(ctx: PipelineContext, step: Step, out: Path, *, resume: bool = False) -> StepOutput:
    """Run ``step``'s kind into ``out``; ``resume`` continues an interrupted attempt (training)."""
    if step.kind == "train":
        return _train_step(ctx, step, out, resume=resume)
    return KINDS[step.kind](ctx, step, out)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _data(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    d = ctx.params.data
    roots: dict[str, Path] = {}
    files: dict[str, Path] = {}
    if d.synthetic is not None:
        from data.synthetic import generate
        from registration.registry import HomographyEntry, save_entry

        s = d.synthetic
        info = generate(out / s.version, s.n_pairs, seed=s.seed, rgb_size=s.rgb_size, thermal_size=s.thermal_size,
                        night_fraction=s.night_fraction, night_hidden_people=s.night_hidden_people, classes=d.classes,
                        version=s.version)
        save_entry(out / "registry", s.version, HomographyEntry(
            H=info.homography, rgb_size=info.rgb_size, thermal_size=info.thermal_size, method="synthetic_known",
            error_px=0.0, error_kind="exact", notes="the generator's homography (exact by construction)"))
        roots[s.version] = out / s.version
        files["registry"] = out / "registry"
    else:
        roots = {r.version: Path(r.path) for r in d.roots}
    content = {v: content_fingerprint(p, ctx.memo) for v, p in roots.items()}
    fps = {v: dataset_fingerprint(p, content=content[v]) for v, p in roots.items()}
    files["datasets"] = atomic.write_json(out / "datasets.json", {
        v: {"path": ctx.rel(roots[v]), "fingerprint": fps[v], "content": content[v]} for v in sorted(roots)})
    return StepOutput(files=files, info={"datasets": fps})


def _split_coco(ds: dict, split: str, drop: frozenset[int] = frozenset()) -> dict:
    keep = {im["id"] for im in ds["images"] if im.get("split") == split and im["id"] not in drop}
    return _subset(ds, keep)


def _subset(ds: dict, keep: set[int] | frozenset[int]) -> dict:
    return {**ds, "images": [im for im in ds["images"] if im["id"] in keep],
            "annotations": [a for a in ds["annotations"] if a["image_id"] in keep]}


def val_pairs(pairs: list[Any], fraction: float, seed: int) -> frozenset[int]:
    """Image ids of the adapt pairs carved out as the val split (``data.val_fraction``).

    Why a hash and not a random draw: a pair's membership depends only on its ``pair_id``
    (``"<version>:<original id>"``) and ``seed``, so it is the same on every machine, in every
    workspace, and stays the same when pairs are added (a new pair never moves an old one).
    """
    import hashlib

    def u(pair_id: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()[:8], "big") / 2**64

    return frozenset(p.image_id for p in pairs if u(p.pair_id) < fraction)


def _index(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    from core.coco import save_dataset
    from data.adapters.folder import build_index
    from data.index import images_dataset
    from data.merge import merge_indexes

    d = ctx.params.data
    roots = atomic.read_json(ctx.input(step, "datasets"))
    built = [build_index(ctx.resolve(info["path"]), version, out / "versions", classes=d.classes, progress=False)
             for version, info in roots.items()]
    idx = merge_indexes(built, out / "index.json") if len(built) > 1 else built[0]
    files = {"index": Path(idx.path)}
    rgb, thermal = idx.load_labels("rgb"), idx.load_labels("thermal")
    if rgb is None:
        raise InputError("the dataset has no RGB labels", str(roots), "the pipeline needs labelled RGB images "
                         "(teacher training) or at least RGB images; add labels_rgb/")
    splits = {im.get("split") for im in rgb["images"]}
    for want in (d.adapt_split, d.test_split, *([d.val_split] if d.val_split else [])):
        if want not in splits:
            raise InputError(f"no image has split '{want}' (splits present: {sorted(s for s in splits if s)})",
                             str(idx.path), "set data.adapt_split/data.test_split/data.val_split or fix split.csv")
    adapt_pairs = idx.select(split=d.adapt_split)
    carved = val_pairs(adapt_pairs, d.val_fraction, d.val_seed) if d.val_fraction > 0 else frozenset()
    files["rgb_adapt"] = save_dataset(out / "rgb_adapt.json", _split_coco(rgb, d.adapt_split, carved))
    if thermal is None:
        raise InputError("the dataset has no thermal labels for the test split", str(idx.path),
                         "add labels_thermal/ (test split at least): evaluation needs thermal ground truth")
    files["thermal_test"] = save_dataset(out / "thermal_test.json", _split_coco(thermal, d.test_split))
    # always written, so that readers can depend on it; no annotations = no thermal adapt labels
    files["thermal_adapt"] = save_dataset(out / "thermal_adapt.json", _split_coco(thermal, d.adapt_split, carved))
    # the thermal adapt frames without labels: what a thermal pseudo-label source runs on
    files["thermal_adapt_images"] = save_dataset(out / "thermal_adapt_images.json", images_dataset(
        [p for p in adapt_pairs if p.image_id not in carved], "thermal", d.classes))
    counts = {"pairs": len(idx.pairs), "adapt": len(adapt_pairs) - len(carved),
              "test": len(idx.select(split=d.test_split))}
    if d.has_val:
        carving = d.val_fraction > 0
        val = _subset(thermal, carved) if carving else _split_coco(thermal, d.val_split or "")
        where = f"data.val_fraction={d.val_fraction}" if carving else f"data.val_split={d.val_split}"
        if not val["images"] or not val["annotations"]:
            raise InputError(f"the val split has {len(val['images'])} frames and {len(val['annotations'])} thermal "
                             f"boxes: decisions cannot be made on it", where,
                             "raise data.val_fraction, or name a split whose pairs have thermal labels "
                             "(labels_thermal/), or remove the val setting")
        files["thermal_val"] = save_dataset(out / "thermal_val.json", val)
        counts["val"] = len(val["images"])
    return StepOutput(files=files, info={"counts": counts})


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def _write_model(ctx: PipelineContext, out: Path, config: str, checkpoint: Path | None, source: str) -> tuple[Path, str]:
    """Write ``model.json``; returns it and the model's fingerprint for the run record."""
    sha = ctx.memo.sha256(checkpoint) if checkpoint is not None else None      # memo: the key hashed it already
    cfg = ctx.rel(config) if Path(config).is_file() else config            # a bundled mmdet name stays a name
    path = atomic.write_json(out / "model.json", {"config": cfg, "checkpoint": ctx.rel(checkpoint) if checkpoint else None,
                                                  "checkpoint_sha256": sha, "source": source})
    return path, f"sha256:{sha}" if sha else "random-init"


def model_of(ctx: PipelineContext, descriptor: Path) -> tuple[str, str | None] | None:
    """(config, checkpoint) of a ``model.json`` descriptor, absolute where they are files; None when
    the descriptor says the model is absent (an optional step that had nothing to train on)."""
    d = atomic.read_json(descriptor)
    if "absent" in d:
        return None
    cfg = str(ctx.resolve(d["config"])) if d["config"].endswith(".py") else d["config"]
    return cfg, (str(ctx.resolve(d["checkpoint"])) if d["checkpoint"] else None)


def _required_model(ctx: PipelineContext, descriptor: Path) -> tuple[str, str | None]:
    model = model_of(ctx, descriptor)
    if model is None:
        raise InputError(f"no model to use: {atomic.read_json(descriptor)['absent']}", str(descriptor),
                         "provide the labels the step that makes this model needs")
    return model


def _model_step(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """The user's detector (config + checkpoint), described for the steps that use it."""
    t = ctx.params.teacher
    assert t.config is not None
    ck = Path(t.checkpoint) if t.checkpoint is not None else None
    fallbacks = [] if ck else ["the teacher has no checkpoint: RANDOM weights (its pseudo-labels are meaningless)"]
    model, fp = _write_model(ctx, out, t.config, ck, "user")
    return StepOutput(files={"model": model}, info={"models": {step.name: fp}, "fallbacks": fallbacks})


def _train_step(ctx: PipelineContext, step: Step, out: Path, *, resume: bool) -> StepOutput:
    from detection.train_spec import spec_from_dict
    from tasks.train import train

    labels = ctx.input(step, "labels")
    anns = atomic.read_json(labels)["annotations"]                # read once: emptiness, ignore regions
    empty = not anns
    if empty and step.options.get("optional"):
        note = f"'{step.name}' not trained: its labels ({labels.name}) are empty (e.g. no thermal labels on the adapt split)"
        log.info(note)
        return StepOutput(files={"model": atomic.write_json(out / "model.json", {"absent": note})}, info={"note": note})
    if empty:
        raise InputError(f"no labels survived to train '{step.name}' on (0 boxes)", str(labels),
                         "lower pseudo.score_threshold, check the teacher (train it longer), or look at the "
                         "infer/pseudo/warp reports' dropped counts")
    if "rgb_labels" in step.needs:             # mixed training: + the RGB frames with their ground truth
        from core.coco import concat_datasets

        labels = atomic.write_json(out / "train_labels.json", concat_datasets(
            [atomic.read_json(labels), atomic.read_json(ctx.input(step, "rgb_labels"))], tags=["thermal", "rgb"]),
            indent=None)
    p = ctx.params
    fields = p.teacher_train_fields() if step.options["fields"] == "teacher" else p.student_train_fields()
    if "erase_ignored" not in fields and any(a.get("iscrowd") for a in anns):
        fields = {**fields, "erase_ignored": True}      # uncertain pseudo-labels (fuse.ignore_from): not background
    init = _required_model(ctx, ctx.input(step, "init"))[1] if "init" in step.needs else None
    val = {"val": {"ann_file": str(ctx.input(step, "val")), "img_root": "/"}} if "val" in step.needs else {}
    spec = spec_from_dict({**fields, "classes": list(p.data.classes), **val,
                           "train": {"ann_file": str(labels), "img_root": "/"}, "work_dir": str(out / "train"),
                           "resume": resume, **({"load_from": init} if init else {})}, f"params ({step.name})")
    result = train(spec)
    if result.slim_checkpoint is None:
        raise RuntimeError(f"{step.name} training produced no checkpoint (see {result.run_dir})")
    ck = Path(result.slim_checkpoint)
    model, fp = _write_model(ctx, out, str(result.config_path), ck, "trained")
    return StepOutput(files={"model": model, "config": Path(result.config_path), "checkpoint": ck,
                             "train_result": Path(result.run_dir) / "train_result.json"},
                      info={"models": {step.name: fp},
                            "fallbacks": list(result.warnings),
                            "train": {"epochs_run": result.epochs_run, "timings": result.timings,
                                      "resumed_from_epoch_checkpoint": "resumed_from" in result.weights}})


# ---------------------------------------------------------------------------------------------
# label transfer
# ---------------------------------------------------------------------------------------------
def _from_report(rep: Any, files: dict[str, Path]) -> StepOutput:
    from core.stage_report import report_path

    files = {**files, "report": report_path(files["coco"])}
    return StepOutput(files=files, cache_hits=rep.cache_hits, cache_misses=rep.cache_misses,
                      info={"counts": rep.counts, "dropped": rep.dropped, "fallbacks": list(rep.fallbacks),
                            "skipped_images": len(rep.skipped_images)})


def _infer(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    from tasks.infer import run_infer

    config, ck = _required_model(ctx, ctx.input(step, "model"))
    rep = run_infer(ctx.input(step, "images"), out / "infer.json",
                    ctx.params.infer_params(config, ck, source=step.options.get("source", "rgb_teacher"),
                                            overrides=step.options.get("params")),
                    cache_dir=ctx.cache_dir("infer"), hash_memo=ctx.memo)
    return _from_report(rep, {"coco": out / "infer.json"})


def _pseudo(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    from tasks.pseudo import run_pseudo

    rep = run_pseudo(ctx.input(step, "predictions"), out / "pseudo.json", ctx.params.pseudo_params(step.options.get("params")))
    return _from_report(rep, {"coco": out / "pseudo.json"})


def _warp(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    from tasks.warp import run_warp

    registry = step.external.get("registry") or ctx.input(step, "registry")
    labels = ctx.input(step, "labels")
    if step.options.get("require_labels") and not atomic.read_json(labels)["annotations"]:
        raise InputError("rgb_source.boxes is 'labels' but the RGB adapt frames have no labels", str(labels),
                         "give the RGB frames label files (labels_rgb/) or set rgb_source.boxes: predictions")
    rep = run_warp(labels, out / "warped.json", ctx.params.warp_params(Path(registry)),
                   index=ctx.input(step, "index"))
    return _from_report(rep, {"coco": out / "warped.json"})


def _refine(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    from tasks.refine import run_refine

    rep = run_refine(ctx.input(step, "labels"), out / "refined.json", ctx.params.refine_params(),
                     index=ctx.input(step, "index"), cache_dir=ctx.cache_dir("refine"), hash_memo=ctx.memo)
    return _from_report(rep, {"coco": out / "refined.json"})


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def _quality(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Score pseudo-labels stage by stage against thermal labels of the adapt split, where they
    exist (synthetic data, benchmarks). Without them the report says so and scores nothing."""
    from tasks.report import ReportInputs, ReportParams, run_report

    index, thermal_gt = ctx.input(step, "index"), ctx.input(step, "thermal_gt")
    if not atomic.read_json(thermal_gt)["annotations"]:
        note = "no thermal labels on the adapt split: pseudo-label quality cannot be measured"
        md = atomic.write_text(out / "quality" / "quality.md", f"# Pseudo-label quality\n\n{note}.\n")
        return StepOutput(files={"markdown": md}, info={"note": note})
    rep = run_report(ReportInputs(thermal_gt=thermal_gt, rgb_gt=ctx.input(step, "rgb_gt"),
                                  pseudo=ctx.input(step, "pseudo") if "pseudo" in step.needs else None,
                                  warped=ctx.input(step, "warped"), refined=ctx.input(step, "refined"),
                                  extra=tuple((role.removeprefix("label:"), ctx.input(step, role))
                                              for role in step.needs if role.startswith("label:"))),
                     out / "quality", ReportParams(n_overlays=2), index=index)
    return StepOutput(files={"markdown": Path(rep.outputs["markdown"]), "json": Path(rep.outputs["json"])},
                      info={"counts": rep.counts})


def _eval(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Score each model column on the step's ground truth (``eval``: test split, ``val``: val split).

    Every model runs through the infer stage (``tasks.infer.infer_results``) with the step cache
    ``ctx.cache_dir("infer")``, so an unchanged model on unchanged frames is all cache hits, and with
    the parameters it pseudo-labels with (the ``infer`` section merged with ``thermal_source.infer``:
    test size, TTA, device; the score floor is at most ``tasks.infer.EVAL_MIN_SCORE``, since COCO AP
    wants low-score detections). Batch size: ``eval.batch_size``.
    """
    from tasks.compare import evaluate_models

    gt, p = ctx.input(step, "gt"), ctx.params
    preds, conditions, reports, notes = {}, {}, [], []
    for column in step.options["columns"]:
        model = model_of(ctx, ctx.input(step, f"model:{column}"))
        if model is None:                     # an optional model (the oracle without thermal labels)
            notes.append(f"column {column} left out: {atomic.read_json(ctx.input(step, f'model:{column}'))['absent']}")
            continue
        preds[column], rep = _predict_column(ctx, column, model, gt, out)
        conditions[column] = {**rep.params, "skipped": len(rep.skipped_images)}
        reports.append(rep)
    ev = evaluate_models(gt, preds, out, p.eval.metrics, columns=step.options["columns"], conditions=conditions,
                         describe=step.options.get("describe"), decisions=(decisions := _decisions(ctx, step, gt)))
    skipped = [f"{c}: {n['skipped']} test frame(s) could not be read: scored as misses (see infer_{c}.json.report.json)"
               for c, n in conditions.items() if n["skipped"]]
    return StepOutput(files={**ev.files, **{f"predictions_{k}": v for k, v in preds.items()}},
                      cache_hits=sum(r.cache_hits for r in reports), cache_misses=sum(r.cache_misses for r in reports),
                      info={"metrics": {**ev.metrics, "table_markdown": ev.markdown}, "notes": notes,
                            "decisions": decisions, "test_sizes": {k: c["test_size"] for k, c in conditions.items()},
                            "fallbacks": list(dict.fromkeys(f for r in reports for f in r.fallbacks)) + skipped})


def _predict_column(ctx: PipelineContext, column: str, model: tuple[str, str | None], gt: Path,
                    out: Path) -> tuple[Path, Any]:
    """One model's COCO results on ``gt`` through the infer stage, as it pseudo-labels (see :func:`_eval`)."""
    from tasks.infer import infer_results

    p = ctx.params
    params = p.infer_params(*model, source="thermal_teacher" if column == "source_only" else "thermal_student",
                            overrides={**p.thermal_source.infer, "batch_size": p.eval.batch_size})
    results, rep = infer_results(gt, out / f"infer_{column}.json", params, cache_dir=ctx.cache_dir("infer"),
                                 hash_memo=ctx.memo)
    return atomic.write_json(out / f"predictions_{column}.json", results, indent=None), rep


def _decisions(ctx: PipelineContext, step: Step, gt: Path) -> str:
    """One sentence for the report and the record: what this run's decisions were made on."""
    from tasks.compare import decisions_sentence

    d = ctx.params.data
    how = (f"data.val_fraction={d.val_fraction} of the adapt pairs" if d.val_fraction else f"split '{d.val_split}'"
           ) if d.has_val else None
    return decisions_sentence(on_val=step.options.get("split") == "val", n_frames=len(atomic.read_json(gt)["images"]),
                              val_how=how, rounds=ctx.params.self_training.rounds)


def _fuse(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    from tasks.fuse import run_fuse

    rep = run_fuse({"rgb": ctx.input(step, "rgb"), "thermal": ctx.input(step, "thermal")}, out / "fused.json",
                   ctx.params.fuse_params(step.options.get("params")))
    return _from_report(rep, {"coco": out / "fused.json"})


KINDS: dict[str, Kind] = {"data": _data, "index": _index, "model": _model_step, "infer": _infer, "pseudo": _pseudo,
                          "warp": _warp, "refine": _refine, "fuse": _fuse, "quality": _quality, "eval": _eval}
