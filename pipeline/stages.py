"""What each step *kind* does: thin glue from a :class:`pipeline.step.Step` to the stage
functions in :mod:`tasks` (one implementation per stage; this module only wires files).

A kind reads its inputs through ``ctx.input(step, role)`` (the upstream outputs its plan entry
names) and writes only under its own stage folder; the work is in the data layer (:mod:`data.splits`,
:mod:`data.synthetic_dataset`) and in :mod:`tasks` (a training step's spec:
:mod:`tasks.train_spec_build`). Models travel between steps as descriptors (:mod:`pipeline.models`).
Image paths in every index and COCO file a step writes are relative to the workspace
(``ctx.image_root``); dataset roots are reached through ``datasets/<version>`` links.

Boxes in every file are COCO ``xywh`` pixels (see :mod:`core.coco`); nothing is converted here.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import atomic
from core.errors import InputError
from pipeline.models import model_of, required_model, write_model
from pipeline.params import set_values
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
    """Fingerprint each dataset root (generating it first for ``data.synthetic``). ``datasets.json``
    names each root by its place in the workspace (``datasets/<version>``, the link made at run
    start, or the generated folder), never by an outside path: its content keys every later step."""
    d = ctx.params.data
    files: dict[str, Path] = {}
    if d.synthetic is not None:
        from data.synthetic_dataset import generate_dataset

        root, files["registry"] = generate_dataset(d.synthetic, out, d.classes)
        roots = {d.synthetic.version: (root, root)}
    else:       # (the folder itself: its content and its DVC pointer beside it; how the workspace reaches it)
        roots = {r.version: (r.path, ctx.dataset_root(r.version)) for r in d.roots}
    content = {v: content_fingerprint(p, ctx.memo) for v, (p, _) in roots.items()}
    fps = {v: dataset_fingerprint(p, content=content[v]) for v, (p, _) in roots.items()}
    files["datasets"] = atomic.write_json(out / "datasets.json", {
        v: {"path": ctx.rel(roots[v][1], resolve=False), "fingerprint": fps[v], "content": content[v]}
        for v in sorted(roots)})
    return StepOutput(files=files, info={"datasets": fps})


def _index(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Index the roots, paths relative to the workspace, and cut the splits (:mod:`data.splits`)."""
    from core.coco import save_dataset
    from data.relocate import build_relative_index
    from data.splits import split_datasets

    roots = {v: info["path"] for v, info in atomic.read_json(ctx.input(step, "datasets")).items()}
    idx = build_relative_index(roots, ctx.workspace, out, ctx.params.data.classes)
    cut = split_datasets(idx, ctx.params.data)
    files = {"index": Path(str(idx.path)), **{k: save_dataset(out / f"{k}.json", ds) for k, ds in cut.datasets.items()}}
    return StepOutput(files=files, info={"counts": cut.counts})


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def _model_step(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """The user's detector (config + checkpoint), described for the steps that use it."""
    t = ctx.params.teacher
    assert t.config is not None
    ck = Path(t.checkpoint) if t.checkpoint is not None else None
    fallbacks = [] if ck else ["the teacher has no checkpoint: RANDOM weights (its pseudo-labels are meaningless)"]
    model, fp = write_model(ctx, out, t.config, ck, "user")
    return StepOutput(files={"model": model}, info={"models": {step.name: fp}, "fallbacks": fallbacks})


def _train_step(ctx: PipelineContext, step: Step, out: Path, *, resume: bool) -> StepOutput:
    """Train the step's detector on its labels (:func:`tasks.train_spec_build.run_training_step`); an
    optional step without labels writes ``model.json`` ``{"absent": why}`` for ``eval`` to leave out."""
    from tasks.train_spec_build import run_training_step

    run = run_training_step(
        ctx.params.train_fields(step.options["fields"]), name=step.name, labels=ctx.input(step, "labels"),
        classes=ctx.params.data.classes, image_root=ctx.image_root, out=out, resume=resume,
        optional=bool(step.options.get("optional")),
        rgb_labels=ctx.input(step, "rgb_labels") if "rgb_labels" in step.needs else None,
        val_labels=ctx.input(step, "val") if "val" in step.needs else None,
        init=(lambda: required_model(ctx, ctx.input(step, "init"))[1]) if "init" in step.needs else None)
    if (result := run.result) is None:
        log.info(run.note)
        return StepOutput(files={"model": atomic.write_json(out / "model.json", {"absent": run.note})},
                          info={"note": run.note})
    ck = Path(result.slim_checkpoint)
    model, fp = write_model(ctx, out, str(result.config_path), ck, "trained")
    return StepOutput(files={"model": model, "config": Path(result.config_path), "checkpoint": ck,
                             "train_result": Path(result.run_dir) / "train_result.json"},
                      info={"models": {step.name: fp}, "fallbacks": list(result.warnings),
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

    config, ck = required_model(ctx, ctx.input(step, "model"))
    rep = run_infer(ctx.input(step, "images"), out / "infer.json",
                    ctx.params.infer_params(config, ck, source=step.options.get("source", "rgb_teacher"),
                                            overrides=step.options.get("params")),
                    cache_dir=ctx.cache_dir("infer"), hash_memo=ctx.memo, image_root=ctx.image_root,
                    compute=ctx.compute)
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

    rep = run_refine(ctx.input(step, "labels"), out / "refined.json", ctx.params.refine_params(image_root=ctx.image_root),
                     index=ctx.input(step, "index"), cache_dir=ctx.cache_dir("refine"), hash_memo=ctx.memo,
                     compute=ctx.compute)
    return _from_report(rep, {"coco": out / "refined.json"})


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def _quality(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Score pseudo-labels stage by stage against thermal labels of the adapt split, where they
    exist (synthetic data, benchmarks). Without them the report says so and scores nothing."""
    from tasks.report import NO_THERMAL_LABELS, ReportInputs, ReportParams, run_report

    rep = run_report(ReportInputs(thermal_gt=ctx.input(step, "thermal_gt"), rgb_gt=ctx.input(step, "rgb_gt"),
                                  pseudo=ctx.input(step, "pseudo") if "pseudo" in step.needs else None,
                                  warped=ctx.input(step, "warped"), refined=ctx.input(step, "refined"),
                                  extra=tuple((role.removeprefix("label:"), ctx.input(step, role))
                                              for role in step.needs if role.startswith("label:"))),
                     out / "quality", ReportParams(n_overlays=2, image_root=str(ctx.image_root)),
                     index=ctx.input(step, "index"))
    files = {k: Path(rep.outputs[k]) for k in ("markdown", "json") if k in rep.outputs}
    return StepOutput(files=files, info={"counts": rep.counts} if "json" in files else {"note": NO_THERMAL_LABELS})


def _eval(ctx: PipelineContext, step: Step, out: Path) -> StepOutput:
    """Score each model column on the step's ground truth (``eval``: test split, ``val``: val split).

    Every model runs through the infer stage (:func:`tasks.compare.evaluate_columns`) with the step
    cache ``ctx.cache_dir("infer")``, so an unchanged model on unchanged frames is all cache hits, and with
    the parameters it pseudo-labels with (the ``infer`` section merged with ``thermal_source.infer``:
    test size, TTA, device; the score floor is at most ``tasks.infer.EVAL_MIN_SCORE``, since COCO AP
    wants low-score detections). Batch size: ``eval.batch_size``.
    """
    from tasks.compare import evaluate_columns

    gt, p = ctx.input(step, "gt"), ctx.params
    params, notes = {}, []
    for column in step.options["columns"]:
        model = model_of(ctx, ctx.input(step, f"model:{column}"))
        if model is None:                     # an optional model (the oracle without thermal labels)
            notes.append(f"column {column} left out: {atomic.read_json(ctx.input(step, f'model:{column}'))['absent']}")
            continue
        params[column] = p.infer_params(*model, source="thermal_teacher" if column == "source_only" else
                                        "thermal_student", overrides={**set_values(p.thermal_source.infer),
                                                                      "batch_size": p.eval.batch_size,
                                                                      "device": p.eval.device})
    res = evaluate_columns(gt, params, out, p.eval.metrics, columns=step.options["columns"],
                           cache_dir=ctx.cache_dir("infer"), hash_memo=ctx.memo, image_root=ctx.image_root,
                           describe=step.options.get("describe"), decisions=(decisions := _decisions(ctx, step, gt)),
                           compute=ctx.compute)
    ev = res.evaluation
    return StepOutput(files={**ev.files, **{f"predictions_{k}": v for k, v in res.predictions.items()}},
                      cache_hits=res.cache_hits, cache_misses=res.cache_misses,
                      info={"metrics": {**ev.metrics, "table_markdown": ev.markdown}, "notes": notes,
                            "decisions": decisions, "test_sizes": {k: c["test_size"] for k, c in res.conditions.items()},
                            "fallbacks": res.fallbacks})


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
